"""OPC UA servers the tests read, on 127.0.0.1 and free ports.

- :class:`AsyncuaServer`: asyncua's server in this process, on its own thread and event
  loop, with a tag of every supported type under ``ns=2;s=Line1.<Name>``; tests write
  values, Bad statuses and timestamps, delete nodes, and stop and start it again on the
  same port; ``Line1.Any`` (DataType BaseDataType) takes a value of any type. With ``secure=True`` it takes only ``Basic256Sha256`` ``SignAndEncrypt``
  and the user ``operator`` / ``plant-floor`` (no anonymous sessions).
- :func:`node_opcua_sample_server`: node-opcua's sample server (``simple_server`` of
  ``node-opcua-samples``, written by others), installed with npm from the pin in
  ``tests/services/node_opcua/`` into ``.cache/node-opcua/`` and run with the machine's
  Node.js. It has no host option, so ``bind_loopback.cjs`` (preloaded) binds its
  listening sockets to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from tests.services.process import ServerProcess, free_port, npm_package

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).with_name("node_opcua")
CACHE = ROOT / ".cache" / "node-opcua"
NAMESPACE = "urn:factoryflow:test"
USER, PASSWORD = "operator", "plant-floor"


def _types() -> dict[str, tuple[Any, Any]]:
    """The Line1 tags: name -> (initial value, VariantType), or (a Variant, None)."""
    from asyncua import ua

    return {
        "Running": (True, ua.VariantType.Boolean), "Mode": (-3, ua.VariantType.SByte),
        "Level": (200, ua.VariantType.Byte), "Temp16": (-12, ua.VariantType.Int16),
        "Count16": (65000, ua.VariantType.UInt16), "Delta": (-70000, ua.VariantType.Int32),
        "Count": (4_000_000_000, ua.VariantType.UInt32), "Energy": (-(2**40), ua.VariantType.Int64),
        "Total": (2**63 + 5, ua.VariantType.UInt64), "Ratio": (0.5, ua.VariantType.Float),
        "Temperature": (21.25, ua.VariantType.Double), "Recipe": ("PX-7 ä", ua.VariantType.String),
        "LastCycle": (datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC), ua.VariantType.DateTime),
        "Barcode": (b"\x00\x01\xff", ua.VariantType.ByteString),
        "Label": (ua.LocalizedText("Presse 1", "de"), ua.VariantType.LocalizedText),
        "Profile": ([1.5, 2.5, 3.5], ua.VariantType.Double),
        "Alarms": ([True, False], ua.VariantType.Boolean),
        "Names": (["a", "b"], ua.VariantType.String),
        "Seq": (-1, ua.VariantType.Int64), "Extra": (0.5, ua.VariantType.Double),
        "BatchId": (uuid.UUID("3f2504e0-4f89-41d3-9a0c-0305e82c3301"), ua.VariantType.Guid),
        "Source": (ua.NodeId("Line1.Temperature", 2), ua.VariantType.NodeId),
        "Kind": (ua.QualifiedName("Press", 2), ua.VariantType.QualifiedName),
        "Health": (ua.StatusCode(ua.StatusCodes.BadTimeout), ua.VariantType.StatusCode),
        "Layout": (ua.XmlElement("<line id='1'/>"), ua.VariantType.XmlElement),
        "Grid": (ua.Variant([[1, 2], [3, 4]], ua.VariantType.Int32, Dimensions=[2, 2]), None),
    }


class AsyncuaServer:
    """asyncua's server on ``opc.tcp://127.0.0.1:<port>``; :meth:`start` and :meth:`stop`
    may be called again (the same port, the address space built afresh)."""

    def __init__(self, secure: bool = False, pki: Path | None = None, trusted: list[Path] | None = None) -> None:
        self.port = free_port()
        self.secure = secure
        self.trusted = trusted  # with secure: the client certificates it trusts (None: any)
        self.pki = pki or Path(tempfile.mkdtemp(prefix="factoryflow-opcua-"))
        self.ns = 0
        self.nodes: dict[str, Any] = {}
        self.reads: dict[str, list[Any]] = {}  # name -> values its reads take, one per Read
        self._server: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="opcua-server")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    @property
    def server_certificate(self) -> Path:
        return self.pki / "server_certificate.der"

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        """Run ``coroutine`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self) -> AsyncuaServer:
        self.run(self._start())
        return self

    async def _start(self) -> None:
        from asyncua import Server, ua
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from asyncua.crypto.permission_rules import User, UserRole
        from cryptography.x509.oid import ExtendedKeyUsageOID

        class Users:
            def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                         certificate: Any = None) -> User | None:
                return User(role=UserRole.User) if (username, password) == (USER, PASSWORD) else None

        server = Server(user_manager=Users() if self.secure else None)
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/")
        server.set_server_name("factoryflow test server")
        if self.secure:
            uri = "urn:factoryflow:test-server"
            await server.set_application_uri(uri)
            key, cert = self.pki / "server_key.pem", self.server_certificate
            await setup_self_signed_certificate(key, cert, uri, "localhost",
                                                [ExtendedKeyUsageOID.SERVER_AUTH], {})
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            server.set_identity_tokens([ua.UserNameIdentityToken])
            if self.trusted is not None:
                server.set_certificate_validator(self._validator())
        self.ns = await server.register_namespace(NAMESPACE)
        line = await server.nodes.objects.add_folder(ua.NodeId("Line1", self.ns), ua.QualifiedName("Line1", self.ns))
        self.nodes = {}
        for name, (value, variant_type) in _types().items():
            variant = value if variant_type is None else ua.Variant(value, variant_type)
            self.nodes[name] = await line.add_variable(ua.NodeId(f"Line1.{name}", self.ns),
                                                       ua.QualifiedName(name, self.ns), variant)
            if isinstance(value, list):
                await self.nodes[name].write_value_rank(ua.ValueRank.OneDimension)
        self.nodes["Any"] = await line.add_variable(  # of DataType BaseDataType: takes any type
            ua.NodeId("Line1.Any", self.ns), ua.QualifiedName("Any", self.ns), ua.Variant(1.0, ua.VariantType.Double),
            datatype=ua.NodeId(ua.ObjectIds.BaseDataType))
        for name in self.reads:
            self._on_read(server, name)
        await server.start()
        self._server = server

    def _validator(self) -> Any:
        """A certificate check that refuses every client certificate but the trusted ones,
        as a server with an empty trust list does (``BadCertificateUntrusted``)."""
        from asyncua import ua
        from asyncua.common.utils import ServiceError
        from cryptography.hazmat.primitives.serialization import Encoding

        async def validate(certificate: Any, _app: Any) -> None:
            trusted = {p.read_bytes() for p in self.trusted or [] if p.exists()}
            if certificate.public_bytes(Encoding.DER) not in trusted:
                raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

        return validate

    def _on_read(self, server: Any, name: str) -> None:
        """Each Read of ``name`` takes the next value of ``reads[name]`` (the last one stays)."""
        from asyncua import ua

        node_id = self.nodes[name].nodeid
        queue = self.reads[name]
        current: list[Any] = [ua.DataValue(ua.Variant(-1, ua.VariantType.Int64))]

        def read(_node_id: Any, _attr: Any) -> Any:
            if queue:
                item = queue.pop(0)
                current[0] = item if isinstance(item, ua.DataValue) else ua.DataValue(
                    ua.Variant(item, ua.VariantType.Int64), SourceTimestamp=datetime.now(UTC),
                    ServerTimestamp=datetime.now(UTC))
            return current[0]

        server.iserver.aspace.set_attribute_value_callback(node_id, ua.AttributeIds.Value, read)

    def take_reads(self, name: str) -> list[Any]:
        """Make each Read of ``name`` take the next value of the returned list."""
        self.reads[name] = []
        if self._server is not None:
            self._on_read(self._server, name)
        return self.reads[name]

    def write(self, name: str, value: Any, variant_type: Any = None, status: Any = None,
              source_timestamp: datetime | None = None) -> None:
        """Set tag ``name``: a value (of ``variant_type``, default the tag's), a status code
        (``ua.StatusCodes.<Name>``) and a source timestamp (default now)."""
        from asyncua import ua

        variant_type = variant_type or _types().get(name, (None, ua.VariantType.Double))[1]
        data_value = ua.DataValue(ua.Variant(value, variant_type),
                                  StatusCode=ua.StatusCode(status if status is not None else ua.StatusCodes.Good),
                                  SourceTimestamp=source_timestamp or datetime.now(UTC),
                                  ServerTimestamp=datetime.now(UTC))
        self.run(self._server.write_attribute_value(self.nodes[name].nodeid, data_value))

    def freeze(self, seconds: float) -> None:
        """Block the server's event loop for ``seconds``, returning at once: the server
        keeps its connections open and answers nothing, as a hung server or a dead network
        path does."""
        self._loop.call_soon_threadsafe(time.sleep, seconds)

    def delete(self, name: str) -> None:
        """Delete tag ``name``'s node."""
        self.run(self._server.delete_nodes([self.nodes[name]]))

    def stop(self) -> None:
        """Stop serving (the port closes); :meth:`start` serves again."""
        if self._server is not None:
            server, self._server = self._server, None
            self.run(self._stop(server))

    @staticmethod
    async def _stop(server: Any) -> None:
        # close the listening socket first: a client reconnecting within the stop (the
        # receiver retries after 1 s) would otherwise keep asyncua's stop waiting for it
        listening = getattr(server.bserver, "_server", None)
        if listening is not None:
            listening.close()
        await server.stop()

    def close(self) -> None:
        self.stop()
        self.run(self._cancel_rest())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        shutil.rmtree(self.pki, ignore_errors=True)

    @staticmethod
    async def _cancel_rest() -> None:
        """Cancel what the stopped server left on the loop (loops of subscriptions whose
        session never closed)."""
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- node-opcua


def node_opcua_sample_server_script() -> Path:
    """node-opcua-samples' ``simple_server.cjs``, installed with npm on first use (again
    when the pin changes).

    :raises FileNotFoundError: npm is missing.
    """
    return npm_package(PACKAGE, CACHE, "node_modules/node-opcua-samples/bin/simple_server.cjs")


class NodeOpcuaServer:
    """node-opcua's sample server on ``opc.tcp://127.0.0.1:<port>``: its ``MyDevices``
    folder holds ``ns=1;s=FanSpeed`` (a Double changed every 10 ms), ``ns=1;s=PumpSpeed``,
    ``ns=1;s=Pressure`` (new value and source timestamp each second), ``ns=1;s=SomeDate``
    and more. :meth:`stop` and :meth:`start` restart it on the same port."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.root = root
        command = ["node", "--require", str(PACKAGE / "bind_loopback.cjs"),
                   str(node_opcua_sample_server_script()), "--port", str(self.port), "--silent"]
        env = {**os.environ, "XDG_CONFIG_HOME": str(root / "config"), "HOME": str(root)}
        self.process = ServerProcess("node-opcua sample server", command, root / "node-opcua.log", env=env)

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    def start(self) -> NodeOpcuaServer:
        def ready() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        self.process.start(ready, timeout=120)  # the first start makes its certificate
        return self

    def stop(self) -> None:
        self.process.stop()


@contextmanager
def node_opcua_sample_server() -> Iterator[NodeOpcuaServer]:
    """Start node-opcua's sample server, yield it, stop it and delete its files."""
    root = Path(tempfile.mkdtemp(prefix="factoryflow-node-opcua-"))
    server = NodeOpcuaServer(root)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)



class _OpcUaProcess:
    """An OPC UA server process on ``opc.tcp://127.0.0.1:<port>`` that tests kill, pause
    (SIGSTOP), resume and stop."""

    port: int
    process: ServerProcess

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.process.kill()

    def pause(self) -> None:
        self.process.pause()

    def resume(self) -> None:
        self.process.resume()

    def stop(self) -> None:
        self.process.stop()


class NodeOpcuaPlant(_OpcUaProcess):
    """node-opcua's server from ``tests/services/node_opcua/plant_server.cjs`` on
    ``opc.tcp://127.0.0.1:<port>``: ``tags`` Double variables ``ns=1;s=Plant.Tag<i>`` that
    take the tick counter every ``period`` seconds (historizing with ``history``),
    ``ns=1;i=2002`` (a numeric NodeId), ``static`` unchanging Doubles
    ``ns=1;s=Plant.Static.<i>`` in folders of 1,000, and with ``reject_unknown_certificates`` a server
    that trusts no client certificate. :meth:`kill`, :meth:`pause`, :meth:`resume` and
    :meth:`start` act on the process (the same port and PKI)."""

    def __init__(self, root: Path, tags: int = 10, period: float = 0.1, history: bool = False,
                 reject_unknown_certificates: bool = False, static: int = 0) -> None:
        node_opcua_sample_server_script()  # installs node-opcua on first use
        self.port = free_port()
        self.root = root
        self.period = period
        command = ["node", "--require", str(PACKAGE / "bind_loopback.cjs"), str(PACKAGE / "plant_server.cjs"),
                   "--port", str(self.port), "--pki", str(root / "pki"), "--tags", str(tags),
                   "--period", str(round(period * 1000)), "--static", str(static)]
        command += ["--history"] * history + ["--reject-unknown-certificates"] * reject_unknown_certificates
        env = {**os.environ, "NODE_PATH": str(CACHE / "node_modules")}
        self.process = ServerProcess("node-opcua plant server", command, root / "node-opcua-plant.log", env=env)

    @property
    def rejected(self) -> Path:
        """Where the server keeps the client certificates it refused."""
        return self.root / "pki" / "PKI" / "rejected"

    def start(self) -> NodeOpcuaPlant:
        def ready() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        self.process.start(ready, timeout=120)
        return self


class AsyncuaHistoryServer(_OpcUaProcess):
    """asyncua's server in its own process (``tests/services/opcua_history_server.py``):
    ``tags`` historizing Doubles ``ns=2;i=<1000 + i>`` (``Tag<i>``) taking the tick count every
    ``period`` seconds, their history in the SQLite file :attr:`db` (it survives
    :meth:`kill`); :meth:`start` again serves on the same port and file."""

    def __init__(self, root: Path, tags: int = 50, period: float = 0.1) -> None:
        import sys

        self.port = free_port()
        self.root = root
        self.db = root / "history.sqlite"
        command = [sys.executable, str(Path(__file__).with_name("opcua_history_server.py")), "--port",
                   str(self.port), "--db", str(self.db), "--tags", str(tags), "--period", str(period)]
        self.process = ServerProcess("asyncua history server", command, root / "asyncua-history.log")

    def start(self) -> AsyncuaHistoryServer:
        def ready() -> bool:
            return "ready" in (self.root / "asyncua-history.log").read_text()

        (self.root / "asyncua-history.log").write_text("")
        self.process.start(ready, timeout=60)
        return self

    def history(self, tag: int) -> list[tuple[datetime, float]]:
        """``(source timestamp UTC, value)`` of every value the server historized for
        ``ns=2;i=<1000 + tag>``, in the order it stored them."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.db)) as db:
            rows = db.execute(f'SELECT SourceTimestamp, Value FROM "2_{1000 + tag}" ORDER BY _Id').fetchall()
        return [(_utc_text(stamp), float(value)) for stamp, value in rows]


def _utc_text(text: str) -> datetime:
    stamp = datetime.fromisoformat(text)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


@contextmanager
def running(kind: type[NodeOpcuaPlant] | type[AsyncuaHistoryServer], **options: Any) -> Iterator[Any]:
    """Start a server of ``kind`` (:class:`NodeOpcuaPlant`, :class:`AsyncuaHistoryServer`) with
    ``options`` in a new directory, yield it, stop it and delete the directory."""
    root = Path(tempfile.mkdtemp(prefix="factoryflow-opcua-"))
    server = kind(root, **options)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def node_opcua_plant(**options: Any) -> contextlib.AbstractContextManager[NodeOpcuaPlant]:
    """:class:`NodeOpcuaPlant` running (:func:`running`)."""
    return running(NodeOpcuaPlant, **options)


def asyncua_history_server(**options: Any) -> contextlib.AbstractContextManager[AsyncuaHistoryServer]:
    """:class:`AsyncuaHistoryServer` running (:func:`running`)."""
    return running(AsyncuaHistoryServer, **options)
