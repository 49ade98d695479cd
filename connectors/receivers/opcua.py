"""The ``opcua`` receiver: tags of an OPC UA server, polled or subscribed, with asyncua.

Implements FactoryTX's OPCUA receiver config (``shared/specs/factorytx-rest-api.txt``,
template ``OPCUA``; ``shared/specs/factorytx-digest.md``) on OPC UA's Read service and
subscriptions (OPC UA Part 4: Read, CreateSubscription, CreateMonitoredItems, Publish).
``docs/opcua.md`` is the user's guide.

**Keys.** FactoryTX's, verbatim: ``connections: [{host, port, timeout}]`` and per stream
``opcua_tags: [{name, exportname, namespace_index}]``. A tag's ``name`` is a string
identifier in ``namespace_index`` (when omitted: the first namespace, from 1, that holds
a node with that identifier, as Kepware's ``ns=2`` tags are found), a full NodeId
(``ns=2;s=Line1.Temp``, ``ns=3;i=1001``, ``i=2258``) or a browse path from the root
(``/Objects/2:Line1/2:Temp``). A connection may give ``endpoint`` (``opc.tcp://...``)
instead of ``host``/``port``, ``security_mode``, ``security_policy``, ``username`` and
``password``, client ``certificate`` and ``private_key`` paths (a self-signed pair is
made under the receiver's data directory when omitted) and a trusted
``server_certificate``. The receiver's ``mode`` is ``poll`` or ``subscribe``.

**Poll mode.** Every ``poll_interval`` seconds, one Read service call for all the
stream's nodes; one record per poll: ``timestamp`` (the newest source timestamp of the
answer, UTC) and each tag under its ``exportname``. ``on_change`` drops a poll whose
values and status codes all equal the last record's.

**Subscribe mode.** One subscription per stream (``publishing_interval``) with a
monitored item per tag (``sampling_interval``, ``queue_size``); one record per data
change: ``timestamp`` (source timestamp, UTC), ``server_timestamp``, ``status_code``
(the status's name, ``Good``, ``BadNodeIdUnknown``...) and the value under the tag's
``exportname`` (the stream's other tags are null in that record). The changes that
arrived since the last poll become one frame.

**Threads.** bytewax's ``next_batch`` never waits for the server: each receiver has one
asyncio event loop on its own thread per worker, holding one asyncua client per
connection. The loop keeps running between polls, as OPC UA needs (keep-alive probes,
Publish requests, channel renewal, reconnects), which is why the loop does not run
inside ``next_batch`` the way bytewax's ``batch_async`` bridge would run it. A stream's
``read`` only takes what the loop gathered and, in poll mode, asks for the next Read;
the runtime wakes it through ``next_awake`` at the next poll.

**Recovery.** The first connection is retried with backoff (1 s doubling up to 5 s)
until it succeeds. Once connected, asyncua's supervisor probes the server every
``watchdog_interval`` seconds and, on a lost connection, reconnects with backoff (1 s
doubling up to 5 s): it activates the old session on a new channel or creates a new
one, and transfers or re-creates the subscription with every monitored item. While the
connection is down, each stream carries an error marker (category ``opcua``) naming
the endpoint and the cause; the first poll after the reconnect clears it. A tag whose
node does not exist (``BadNodeIdUnknown``), or whose value comes back with a Bad
status, marks the stream (category ``input``) with its NodeId; the stream's other tags
go on.

**Types.** Values keep their OPC UA type: Boolean → Boolean, SByte..UInt64 → Int8..UInt64,
Float → Float32, Double → Float64, String, XmlElement, Guid, NodeId, QualifiedName,
LocalizedText (its text) and StatusCode (its name) → String, DateTime → Datetime(UTC),
ByteString → Binary, arrays → lists (a matrix: nested lists). A tag's column type is set
by its first good value; a later value of another type, a value with a Bad status and a
type without a column type (structures) are null, and the stream is marked. Nothing is
converted to fit.

**State and delivery across a restart of factoryflow.** OPC UA serves present values,
not history, so neither mode can replay what changed while factoryflow was stopped.
Poll mode reads the present values again at start (with ``on_change``, the state holds
the last values sent, so an unchanged first poll is not sent again). Subscribe mode's
state holds each tag's last source timestamp sent: an initial notification of the new
subscription carrying that same sample is not sent again, so nothing is sent twice, and the changes made
while nobody was subscribed are lost. During a connection loss the server keeps the
session's subscription for its lifetime and asyncua republishes what the server still
queues; a server restart loses the changes of the outage. Changes received but not yet
handed to the dataflow when factoryflow stops (less than one ``poll_interval``) are
lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import re
import socket
import sys
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec
import polars as pl

from dataflows.backoff import Backoff
from dataflows.records import Batch
from dataflows.registry import receivers
from dataflows.sdk import (
    JsonPath,
    NonEmptyStr,
    NonNegativeInt,
    ReceiverConfig,
    RunContext,
    StreamConfig,
    StreamReader,
    Template,
    Violation,
    describe,
    error,
    warning,
)

if TYPE_CHECKING:  # asyncua loads when a stream runs, not when the config does
    from asyncua import Client, ua

_log = logging.getLogger("receiver.opcua")
# asyncua logs every request and publish at INFO; the receiver logs what a user needs
logging.getLogger("asyncua").setLevel(logging.WARNING)

MODES = ("poll", "subscribe")
SECURITY_MODES = ("None", "Sign", "SignAndEncrypt")
SECURITY_POLICIES = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
#: The first connection attempts, and asyncua's reconnects, wait 1 s doubling up to this.
RECONNECT_MAX_DELAY = 5.0
#: Data changes a subscribing stream holds for the dataflow at most (memory stays bounded
#: when the dataflow stops taking them).
MAX_BUFFERED_CHANGES = 100_000
_NODE_ID = re.compile(r"^(ns=\d+;)?(i|s|g|b)=", re.IGNORECASE)


_Seconds = Annotated[float, msgspec.Meta(ge=0)]
_PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
_Positive = Annotated[int, msgspec.Meta(ge=1)]


class OpcUaError(Exception):
    """The server cannot be reached or refused the session (retried; marks the stream)."""


# --------------------------------------------------------------------------- config


class OpcUaConnection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An OPC UA server endpoint, and how to open a session on it."""

    host: Annotated[str | None, describe("Hostname or IP address of the server.")] = None
    port: Annotated[int, describe("TCP port.", ge=1, le=65535)] = 4840
    endpoint: Annotated[str | None, describe(
        "Endpoint URL, e.g. 'opc.tcp://plc.plant.local:4840/server' (instead of host and port).")] = None
    timeout: Annotated[float, describe("Seconds to wait for an answer to each request.", gt=0)] = 4.0
    connection_name: Annotated[str | None, describe("Name streams use to pick this connection.")] = None
    security_mode: Annotated[str, describe("Message security of the secure channel.",
                                           choices=SECURITY_MODES)] = "None"
    security_policy: Annotated[str | None, describe(
        "Security policy when security_mode is Sign or SignAndEncrypt (default Basic256Sha256).",
        choices=SECURITY_POLICIES)] = None
    username: Annotated[str | None, describe("User name of the session (anonymous when unset).")] = None
    password: Annotated[str | None, describe("Password of the user.", secret=True)] = None
    certificate: Annotated[str | None, describe(
        "Path of the client's application instance certificate (PEM or DER); a self-signed one is "
        "made under the receiver's data directory when unset.")] = None
    private_key: Annotated[str | None, describe("Path of the certificate's private key (PEM or DER).")] = None
    server_certificate: Annotated[str | None, describe(
        "Path of the server's certificate to trust (PEM or DER); when unset, the certificate the "
        "server's endpoint presents is used.")] = None
    watchdog_interval: Annotated[float, describe(
        "Seconds between the keep-alive probes (a read of the server's state) that detect a dead "
        "connection.", gt=0)] = 5.0

    @property
    def url(self) -> str:
        """The endpoint URL: ``endpoint``, else ``opc.tcp://host:port``."""
        return self.endpoint or f"opc.tcp://{self.host}:{self.port}"


class OpcUaTag(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One node to read."""

    name: Annotated[NonEmptyStr, describe(
        "The node: a string identifier (e.g. 'Spraypaint.Drying.Fan.Speed') in namespace_index, a "
        "NodeId ('ns=2;s=Line1.Temp', 'ns=3;i=1001') or a browse path ('/Objects/2:Line1/2:Temp').")]
    exportname: Annotated[NonEmptyStr, describe("Output field name.")]
    namespace_index: Annotated[NonNegativeInt | None, describe(
        "Namespace index of a string identifier; when unset, the first namespace (from 1) holding "
        "a node with that identifier.")] = None

    @property
    def form(self) -> str:
        """What ``name`` is: ``"node_id"``, ``"browse_path"`` or ``"string"`` (an identifier)."""
        name = self.name.strip()
        return "node_id" if _NODE_ID.match(name) else "browse_path" if name.startswith("/") else "string"

    def node_id(self) -> ua.NodeId | None:
        """The NodeId the tag names without asking the server (a NodeId, or a string
        identifier with its ``namespace_index``); None for a browse path or a namespace search."""
        from asyncua import ua

        if self.form == "node_id":
            return ua.NodeId.from_string(self.name.strip())
        if self.form == "string" and self.namespace_index is not None:
            return ua.NodeId(self.name.strip(), self.namespace_index)
        return None


class OpcUaStream(StreamConfig, kw_only=True):
    """Tags read together as one stream."""

    opcua_tags: Annotated[list[OpcUaTag], describe("Nodes of the stream.", min_length=1)]
    connection_name: Annotated[str | None, describe("Connection to use; the first by default.")] = None


@receivers.register
class OpcUaReceiver(ReceiverConfig, tag="opcua", kw_only=True):
    """Reads tags from OPC UA servers by polling (Read) or subscriptions."""

    title: ClassVar[str] = "OPC UA"
    template: ClassVar[Template] = Template(
        "OPCUA", "A template for collecting data from an OPC UA server", {
            "data_receiver_name": "receiver_0", "protocol": "opcua", "poll_interval": 4,
            "connections": [{"host": "<Please input the hostname or IP address (e.g. 127.0.0.1)>",
                             "port": 49320, "timeout": 3}],
            "streams": [
                {"asset": "asset_1", "stream_type": "cycle",
                 "opcua_tags": [{"name": "Spraypaint.Drying.Fan.Speed", "exportname": "Spraypaint1"}]},
                {"asset": "asset_2", "stream_type": "cycle",
                 "opcua_tags": [{"name": "Blister.Pack.Packaging", "exportname": "BlisterPack1"}]},
            ]})
    example: ClassVar[dict[str, Any]] = {
        "data_receiver_name": "press_opcua", "protocol": "opcua", "poll_interval": 1,
        "mode": "subscribe", "sampling_interval": 0.1, "publishing_interval": 1,
        "connections": [{"host": "kepware.plant.local", "port": 49320, "timeout": 3,
                         "security_mode": "SignAndEncrypt", "security_policy": "Basic256Sha256",
                         "username": "collector", "password": "${OPCUA_PASSWORD}"}],
        "streams": [{"asset": "press_1", "stream_type": "cycle", "opcua_tags": [
            {"name": "Press1.Cycle.Count", "exportname": "cycle_count", "namespace_index": 2},
            {"name": "ns=2;s=Press1.Hydraulics.Pressure", "exportname": "pressure"}]}]}

    connections: Annotated[list[OpcUaConnection], describe("Servers.", min_length=1)]
    streams: Annotated[list[OpcUaStream], describe("Streams.", min_length=1)]
    mode: Annotated[str, describe(
        "'poll': one Read of every tag per poll_interval; 'subscribe': monitored items, one record "
        "per data change.", choices=MODES)] = "poll"
    sampling_interval: Annotated[_Seconds | None, describe(
        "Subscribe: seconds between the server's samples of each tag, 0 for as fast as it can "
        "(default: the publishing interval).")] = None
    publishing_interval: Annotated[_PositiveSeconds | None, describe(
        "Subscribe: seconds between the server's notification messages (default: poll_interval).")] = None
    queue_size: Annotated[_Positive | None, describe(
        "Subscribe: changes the server keeps per tag between two notification messages (default: "
        "enough for every sample of a publishing interval).")] = None
    on_change: Annotated[bool, describe(
        "Poll: send a record only when a value or status changed since the last one.")] = False

    def violations(self, path: JsonPath) -> list[Violation]:
        out: list[Violation] = []
        names = {c.connection_name for c in self.connections}
        for index, conn in enumerate(self.connections):
            c_path = [*path, "connections", index]
            if (conn.host is None) == (conn.endpoint is None):
                out.append(error("give either host (and port) or endpoint", c_path))
            if conn.endpoint is not None and not conn.endpoint.startswith("opc.tcp://"):
                out.append(error(f"endpoint {conn.endpoint!r} is not an opc.tcp:// URL",
                                 [*c_path, "endpoint"]))
            secure = conn.security_mode != "None"
            if not secure and conn.security_policy is not None:
                out.append(error("security_policy needs security_mode Sign or SignAndEncrypt",
                                 [*c_path, "security_policy"]))
            if (conn.certificate is None) != (conn.private_key is None):
                out.append(error("certificate and private_key go together", c_path))
            if not secure and any(v is not None for v in (conn.certificate, conn.server_certificate)):
                out.append(warning("certificates are not used with security_mode None", c_path))
            if conn.password is not None and conn.username is None:
                out.append(error("password without username", [*c_path, "password"]))
            if conn.username is not None and not secure:
                out.append(warning("the password crosses the network with security_mode None "
                                   "(encrypted only under the server's user token policy)", c_path))
        exports_seen: dict[str, int] = {}
        for s_index, stream in enumerate(self.streams):
            s_path = [*path, "streams", s_index]
            if stream.connection_name is not None and stream.connection_name not in names:
                out.append(error(f"no connection named {stream.connection_name!r}",
                                 [*s_path, "connection_name"]))
            exports_seen.clear()
            for t_index, tag in enumerate(stream.opcua_tags):
                t_path = [*s_path, "opcua_tags", t_index]
                if tag.exportname in exports_seen:
                    out.append(error(f"exportname {tag.exportname!r} is also tag "
                                     f"{exports_seen[tag.exportname]}'s", [*t_path, "exportname"]))
                exports_seen[tag.exportname] = t_index
                if tag.exportname in _RESERVED and self.mode == "subscribe":
                    out.append(error(f"exportname {tag.exportname!r} is a field of every "
                                     "subscription record", [*t_path, "exportname"]))
                if tag.namespace_index is not None and tag.form != "string":
                    out.append(warning("namespace_index is ignored: the name is a NodeId or a browse path",
                                       [*t_path, "namespace_index"]))
        if self.mode == "poll":
            for key in ("sampling_interval", "publishing_interval", "queue_size"):
                if getattr(self, key) is not None:
                    out.append(warning(f"{key} applies to mode subscribe only", [*path, key]))
        elif self.on_change:
            out.append(warning("on_change applies to mode poll (a subscription sends changes only)",
                               [*path, "on_change"]))
        return out

    def connection_for(self, stream: OpcUaStream) -> int:
        """The index of the connection ``stream`` reads from."""
        for index, conn in enumerate(self.connections):
            if stream.connection_name is not None and conn.connection_name == stream.connection_name:
                return index
        return 0

    @property
    def publishing_seconds(self) -> float:
        """The publishing interval in seconds (default: ``poll_interval``)."""
        return self.publishing_interval or self.poll_interval

    @property
    def sampling_seconds(self) -> float:
        """The sampling interval in seconds (default: the publishing interval)."""
        return self.publishing_seconds if self.sampling_interval is None else self.sampling_interval

    @property
    def queue_length(self) -> int:
        """The monitored items' queue size (default: the samples of a publishing interval)."""
        if self.queue_size is not None:
            return self.queue_size
        return max(1, math.ceil(self.publishing_seconds / max(self.sampling_seconds, 0.001)))

    def open_stream(self, stream: StreamConfig, resume_state: Any, ctx: RunContext,
                    shared: dict[str, Any]) -> _OpcUaReader:
        assert isinstance(stream, OpcUaStream)
        engine = shared.get("opcua")
        if engine is None or engine.closed:
            engine = shared["opcua"] = _Engine(self, ctx)
        return _OpcUaReader(self, stream, engine, ctx, resume_state)


_RESERVED = ("timestamp", "server_timestamp", "status_code")


# --------------------------------------------------------------------------- values


def _dtype_of(variant: ua.Variant) -> pl.DataType | None:
    """The polars type of ``variant``'s values, or None for a type without one (structures)."""
    from asyncua import ua

    base: pl.DataType | None = {
        ua.VariantType.Boolean: pl.Boolean(), ua.VariantType.SByte: pl.Int8(),
        ua.VariantType.Byte: pl.UInt8(), ua.VariantType.Int16: pl.Int16(),
        ua.VariantType.UInt16: pl.UInt16(), ua.VariantType.Int32: pl.Int32(),
        ua.VariantType.UInt32: pl.UInt32(), ua.VariantType.Int64: pl.Int64(),
        ua.VariantType.UInt64: pl.UInt64(), ua.VariantType.Float: pl.Float32(),
        ua.VariantType.Double: pl.Float64(), ua.VariantType.String: pl.String(),
        ua.VariantType.XmlElement: pl.String(), ua.VariantType.Guid: pl.String(),
        ua.VariantType.NodeId: pl.String(), ua.VariantType.ExpandedNodeId: pl.String(),
        ua.VariantType.QualifiedName: pl.String(), ua.VariantType.LocalizedText: pl.String(),
        ua.VariantType.StatusCode: pl.String(), ua.VariantType.DateTime: pl.Datetime("us", "UTC"),
        ua.VariantType.ByteString: pl.Binary(),
    }.get(variant.VariantType)
    if base is None:
        return None
    if not variant.is_array:
        return base
    depth = len(variant.Dimensions) if variant.Dimensions else 1
    for _ in range(depth):
        base = pl.List(base)
    return base


def _python(value: Any) -> Any:
    """A decoded OPC UA value as a plain Python value of its column (lists kept as lists)."""
    from asyncua import ua

    if isinstance(value, list):
        return [_python(v) for v in value]
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, ua.XmlElement):
        return value.Value
    if isinstance(value, ua.StatusCode):
        return value.name
    if isinstance(value, ua.NodeId | ua.QualifiedName):
        return value.to_string()
    if isinstance(value, bytes | str | bool | int | float) or value is None:
        return value
    return str(value)  # Guid


def _status_name(data_value: ua.DataValue) -> str:
    """The name of a DataValue's status code (``Good`` when it has none)."""
    return data_value.StatusCode.name if data_value.StatusCode is not None else "Good"


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class _Tag:
    """One tag of a stream as resolved on the server."""

    config: OpcUaTag
    node_id: Any = None  # ua.NodeId once resolved
    problem: str | None = None
    reported: str | None = None  # the problem last reported (each is reported once)

    @property
    def export(self) -> str:
        return self.config.exportname

    @property
    def where(self) -> str:
        """The tag in messages: ``'export' (ns=2;s=Name)``."""
        node = self.node_id.to_string() if self.node_id is not None else self.config.name
        return f"tag {self.export!r} ({node})"


# --------------------------------------------------------------------------- the event loop


@dataclass
class _Feed:
    """What the event loop hands one stream's reader; shared by two threads under ``lock``.

    :ivar changes: subscribe mode: ``(export, DataValue)`` per data change, oldest first.
    :ivar polls: poll mode: the answers to Read calls not yet taken: (tags, DataValues).
    :ivar reports: ``(level, message)`` for the stream's markers (``error``: bad input).
    """

    stream: OpcUaStream
    tags: list[_Tag]
    lock: threading.Lock = field(default_factory=threading.Lock)
    changes: list[tuple[str, Any]] = field(default_factory=list)
    polls: list[list[tuple[_Tag, Any]]] = field(default_factory=list)
    reports: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0  # data changes dropped since the reader last looked
    poll_pending: bool = False
    poll_error: str | None = None
    resolved: bool = False
    subscription: Any = None  # asyncua Subscription

    def report(self, level: str, message: str) -> None:
        with self.lock:
            self.reports.append((level, message))


class _Session:
    """One asyncua client on one connection, for the streams that use it; lives on the
    engine's event loop."""

    def __init__(self, receiver: OpcUaReceiver, conn: OpcUaConnection, ctx: RunContext) -> None:
        self.receiver = receiver
        self.conn = conn
        self.ctx = ctx
        self.feeds: list[_Feed] = []
        self.client: Client | None = None
        self.problem: str | None = None  # why the last attempt failed, or the connection was lost
        self._ready = False
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ state (any thread)

    @property
    def connected(self) -> bool:
        """The session is up and its streams are set up."""
        if not self._ready or self.client is None:
            return False
        from asyncua.client.ua_client import UaClientState

        return self.client.uaclient.state is UaClientState.CONNECTED

    def outage(self) -> str | None:
        """Why the session is down, for the stream's marker; None while it is up or the first
        attempt to connect is under way."""
        if self.connected or (self.problem is None and not self._ready):
            return None
        if self._ready:
            return f"{self.conn.url}: connection lost ({self.problem or 'no answer'}); reconnecting"
        return f"{self.conn.url}: {self.problem}"

    # ------------------------------------------------------------------ the loop's side

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def add(self, feed: _Feed) -> None:
        self.feeds.append(feed)
        if self._ready:
            await self._set_up(feed)

    async def remove(self, feed: _Feed) -> None:
        if feed in self.feeds:
            self.feeds.remove(feed)
        if feed.subscription is not None:
            try:
                await asyncio.wait_for(feed.subscription.delete(), self.conn.timeout)
            except Exception as exc:  # noqa: BLE001 - the session may be gone already
                _log.debug("deleting the subscription of %s failed: %s", feed.stream.key, exc)

    async def close(self) -> None:
        """Stop connecting (an attempt under way is cancelled) and close the session."""
        self._closing.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_client()

    async def _run(self) -> None:
        attempt = 0
        while not self._closing.is_set():
            try:
                await self._connect()
            except Exception as exc:  # noqa: BLE001 - every failure is retried, and shown
                self.problem = _explain(exc)
                attempt += 1
                delay = Backoff(initial=1.0, maximum=RECONNECT_MAX_DELAY, jitter=0.5).delay(attempt)
                _log.error("%s: connecting failed (attempt %d, retrying in %.1f s): %s",
                           self.conn.url, attempt, delay, self.problem)
                await self._drop_client()
                try:
                    await asyncio.wait_for(self._closing.wait(), delay)
                except TimeoutError:
                    pass
                continue
            attempt = 0
            await self._closing.wait()

    async def _connect(self) -> None:
        from asyncua import Client

        client = Client(self.conn.url, timeout=self.conn.timeout,
                        watchdog_intervall=self.conn.watchdog_interval)
        self.client = client
        client.application_uri = f"urn:{socket.gethostname()}:factoryflow:{self.receiver.data_receiver_name}"
        client.name = client.description = f"factoryflow {self.receiver.data_receiver_name}"
        if self.conn.username is not None:
            client.set_user(self.conn.username)
            if self.conn.password is not None:
                client.set_password(self.conn.password)
        if self.conn.security_mode != "None":
            await self._secure(client)
        client.connection_lost_callback = self._lost
        await asyncio.wait_for(
            client.connect(auto_reconnect=True, reconnect_max_delay=RECONNECT_MAX_DELAY,
                           reconnect_request_timeout=self.conn.timeout),
            timeout=4 * self.conn.timeout)
        _log.info("%s: session open (security %s%s, %s)", self.conn.url, self.conn.security_mode,
                  f" {self.policy_name}" if self.conn.security_mode != "None" else "",
                  f"user {self.conn.username}" if self.conn.username else "anonymous")
        done: set[int] = set()
        while pending := [f for f in self.feeds if id(f) not in done]:  # streams may join meanwhile
            for feed in pending:
                await self._set_up(feed)
                done.add(id(feed))
        self._ready = True
        self.problem = None

    @property
    def policy_name(self) -> str:
        return self.conn.security_policy or "Basic256Sha256"

    async def _secure(self, client: Client) -> None:
        from asyncua import ua
        from asyncua.crypto import security_policies

        policy = getattr(security_policies, "SecurityPolicy" + self.policy_name.replace("_", ""))
        if self.conn.certificate is not None:
            cert, key = Path(self.conn.certificate), Path(self.conn.private_key or "")
            uri = _certificate_uri(cert)
            if uri is not None:
                client.application_uri = uri
        else:
            pki = self.ctx.component_dir(self.receiver.data_receiver_name) / "pki"
            cert, key = pki / "client_certificate.der", pki / "client_private_key.pem"
            new = not cert.exists()
            await client.setup_self_signed_certificate(key, cert)
            if new:
                _log.warning("%s: made a self-signed client certificate, %s; the server must "
                             "trust it", self.conn.url, cert)
        await client.set_security(policy, str(cert), str(key), server_certificate=self.conn.server_certificate,
                                  mode=getattr(ua.MessageSecurityMode, self.conn.security_mode))

    async def _lost(self, exc: Exception) -> None:
        self.problem = _explain(exc)
        _log.error("%s: connection lost (%s); reconnecting", self.conn.url, self.problem)

    async def _drop_client(self) -> None:
        client, self.client, self._ready = self.client, None, False
        for feed in self.feeds:
            feed.resolved, feed.subscription = False, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(), self.conn.timeout)
        except Exception as exc:  # noqa: BLE001 - closing a dead session fails; nothing to do
            _log.debug("%s: disconnect: %s", self.conn.url, exc)

    # ------------------------------------------------------------------ streams

    async def _set_up(self, feed: _Feed) -> None:
        await self._resolve(feed)
        if self.receiver.mode == "subscribe":
            await self._subscribe(feed)

    async def _resolve(self, feed: _Feed) -> None:
        """Each tag's NodeId, checked with one Read of the nodes' NodeClass; a tag whose node
        does not exist marks the stream."""
        from asyncua import ua

        assert self.client is not None
        client = self.client
        candidates: list[tuple[_Tag, Any]] = []
        namespaces = len(await client.get_namespace_array())
        for tag in feed.tags:
            tag.node_id, tag.problem = None, None
            named, name = tag.config.node_id(), tag.config.name.strip()
            if named is not None:
                candidates.append((tag, named))
            elif tag.config.form == "browse_path":
                elements = [e for e in name.split("/") if e]
                try:
                    node = await client.nodes.root.get_child(elements)
                    candidates.append((tag, node.nodeid))
                except ua.UaStatusCodeError as exc:
                    tag.problem = f"browse path {name!r}: {type(exc).__name__}"
            else:  # a string identifier without namespace_index: every namespace from 1
                candidates += [(tag, ua.NodeId(name, ns)) for ns in range(1, namespaces)]
        params = ua.ReadParameters()
        for _, node_id in candidates:
            params.NodesToRead.append(ua.ReadValueId(NodeId=node_id, AttributeId=ua.AttributeIds.NodeClass))
        answers = await client.uaclient.read(params) if candidates else []
        for (tag, node_id), answer in zip(candidates, answers, strict=True):
            if tag.node_id is not None:
                continue  # found in an earlier namespace
            if answer.StatusCode.is_good():
                tag.node_id = node_id
            elif tag.config.form == "string" and tag.config.namespace_index is None:
                tag.problem = f"no namespace holds a node with the string identifier {tag.config.name!r}"
            else:
                tag.problem = answer.StatusCode.name
        for tag in feed.tags:
            if tag.node_id is None:
                tag.problem = tag.problem or "BadNodeIdUnknown"
                if tag.reported != tag.problem:
                    feed.report("error", f"{tag.where}: {tag.problem}")
                tag.reported = tag.problem
                tag.node_id = tag.config.node_id()  # a named node is read on: it may come back
        feed.resolved = True

    async def _subscribe(self, feed: _Feed) -> None:
        from asyncua import ua

        assert self.client is not None
        receiver = self.receiver
        handler = _ChangeHandler(feed)
        subscription = await self.client.create_subscription(receiver.publishing_seconds * 1000, handler)
        tags = [t for t in feed.tags if t.node_id is not None]
        handles: list[Any] = []
        if tags:
            handles = await subscription.subscribe_data_change(
                [self.client.get_node(t.node_id) for t in tags], queuesize=receiver.queue_length,
                sampling_interval=receiver.sampling_seconds * 1000)
        for tag, handle in zip(tags, handles, strict=True):
            if isinstance(handle, ua.StatusCode) and tag.reported != handle.name:
                tag.reported = handle.name
                feed.report("error", f"{tag.where}: {handle.name}")
        feed.subscription = subscription
        _log.info("%s: %s subscribed to %d tags (publishing every %s s, sampling every %s s, "
                  "queue %d)", self.conn.url, feed.stream.key, len(tags), receiver.publishing_seconds,
                  receiver.sampling_seconds, receiver.queue_length)

    async def poll(self, feed: _Feed) -> None:
        """One Read of every node of ``feed``; the answer (or the error) goes to the feed."""
        from asyncua import ua

        try:
            if self.client is None or not self._ready:
                raise OpcUaError(self.outage() or f"{self.conn.url}: not connected")
            if not feed.resolved:
                await self._resolve(feed)
            tags = [t for t in feed.tags if t.node_id is not None]
            params = ua.ReadParameters()
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            for tag in tags:
                params.NodesToRead.append(ua.ReadValueId(NodeId=tag.node_id, AttributeId=ua.AttributeIds.Value))
            answers = await self.client.uaclient.read(params) if tags else []
            if any(a.StatusCode.value in (ua.StatusCodes.BadNodeIdUnknown, ua.StatusCodes.BadNodeIdInvalid)
                   for a in answers):
                feed.resolved = False  # the address space changed: resolve again at the next poll
            with feed.lock:
                feed.polls.append(list(zip(tags, answers, strict=True)))
                feed.poll_error = None
        except Exception as exc:  # noqa: BLE001 - the reader raises it as the stream's failure
            with feed.lock:
                feed.poll_error = f"{self.conn.url}: Read failed: {_explain(exc)}"
        finally:
            feed.poll_pending = False


class _ChangeHandler:
    """asyncua's subscription handler: each data change goes to the feed, under each export
    name of its node. At most :data:`MAX_BUFFERED_CHANGES` wait there (a dataflow that stopped
    taking them); beyond, the oldest are dropped and the stream is warned."""

    def __init__(self, feed: _Feed) -> None:
        self._feed = feed
        self._exports: dict[Any, list[str]] = {}
        for tag in feed.tags:
            self._exports.setdefault(tag.node_id, []).append(tag.export)

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        value = data.monitored_item.Value
        feed = self._feed
        with feed.lock:
            for export in self._exports.get(node.nodeid, ()):
                feed.changes.append((export, value))
            if len(feed.changes) > MAX_BUFFERED_CHANGES:
                dropped = len(feed.changes) - MAX_BUFFERED_CHANGES
                del feed.changes[:dropped]
                feed.dropped += dropped

    def status_change_notification(self, status: Any) -> None:
        _log.warning("%s: subscription status %s", self._feed.stream.key, status.Status)

    def event_notification(self, event: Any) -> None:  # not subscribed to events
        pass


def _explain(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, TimeoutError | asyncio.TimeoutError) and not text:
        return "no answer (timeout)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _certificate_uri(path: Path) -> str | None:
    """The application URI in the SubjectAltName of the certificate at ``path``."""
    from cryptography import x509

    data = path.read_bytes()
    cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


class _Engine:
    """One receiver's event loop thread on one worker, with a :class:`_Session` per
    connection in use; started by the first read, stopped when its last stream closes."""

    def __init__(self, receiver: OpcUaReceiver, ctx: RunContext) -> None:
        self.receiver = receiver
        self.ctx = ctx
        self.closed = False
        self._users = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sessions: dict[int, _Session] = {}

    def attach(self) -> None:
        with self._lock:
            self._users += 1

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coroutine`` on the loop (started on first use); its concurrent future."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                                 name=f"opcua-{self.receiver.data_receiver_name}")
                self._thread.start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def session(self, index: int, feed: _Feed) -> _Session:
        """The session of connection ``index`` (started on first use), with ``feed`` added."""
        with self._lock:
            session = self._sessions.get(index)
            new = session is None
            if session is None:
                session = self._sessions[index] = _Session(self.receiver, self.receiver.connections[index],
                                                           self.ctx)

        async def add() -> None:
            if new:
                session.start()
            await session.add(feed)

        self.submit(add())
        return session

    def detach(self, feed: _Feed | None, session: _Session | None) -> None:
        """A stream closed; the last one stops the sessions and the loop."""
        with self._lock:
            self._users -= 1
            last = self._users <= 0
            loop = self._loop
        if loop is None:
            if last:
                self.closed = True
            return
        timeout = max(c.timeout for c in self.receiver.connections) + 5
        if session is not None and feed is not None and not last:
            self._wait(self.submit(session.remove(feed)), timeout)
        if not last:
            return
        self.closed = True

        async def stop() -> None:
            await asyncio.gather(*(s.close() for s in self._sessions.values()), return_exceptions=True)
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:  # what the closed clients left behind
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self._wait(self.submit(stop()), timeout)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        if not loop.is_running():
            loop.close()

    @staticmethod
    def _wait(future: Any, timeout: float) -> None:
        try:
            future.result(timeout)
        except Exception as exc:  # noqa: BLE001 - closing: log and go on
            _log.warning("closing the OPC UA session: %s", _explain(exc))


# --------------------------------------------------------------------------- the reader


class _OpcUaReader(StreamReader):
    marker_category = "opcua"
    failure_text = "OPC UA read failed"
    retryable = (OpcUaError,)

    def __init__(self, receiver: OpcUaReceiver, stream: OpcUaStream, engine: _Engine, ctx: RunContext,
                 state: Any) -> None:
        self._receiver = receiver
        self._stream = stream
        self._engine = engine
        self._ctx = ctx
        self._index = receiver.connection_for(stream)
        self._url = receiver.connections[self._index].url
        self._feed = _Feed(stream, [_Tag(t) for t in stream.opcua_tags])
        self._session: _Session | None = None
        self._dtypes: dict[str, pl.DataType] = {}
        self._bad: dict[str, str] = {}  # export -> the problem last reported (reported once)
        state = state if isinstance(state, dict) else {}
        self._last: dict[str, Any] | None = state.get("last")
        self._sent: dict[str, str] = dict(state.get("source_timestamps") or {})
        engine.attach()
        # the runtime looks again every poll_interval (at most 5 s) while the connection is
        # down: reconnecting is the session's job, the reader only reports it
        poll = receiver.poll_interval
        self.retry_policy = Backoff(initial=poll, maximum=max(poll, 5.0), jitter=0.1 * poll)

    def read(self) -> tuple[list[Batch], bool]:
        if self._session is None:
            self._session = self._engine.session(self._index, self._feed)
        feed = self._feed
        with feed.lock:
            changes, feed.changes = feed.changes, []
            polls, feed.polls = feed.polls, []
            reports, feed.reports = feed.reports, []
            poll_error, feed.poll_error = feed.poll_error, None
            dropped, feed.dropped = feed.dropped, 0
        if dropped:
            message = f"{dropped} data changes dropped: more than {MAX_BUFFERED_CHANGES} waited for the dataflow"
            reports.append(("warning", message))
        for level, message in reports:
            (self.report_bad_input if level == "error" else self.report_warning)(message)
        if self._receiver.mode == "poll":
            self._next_poll()
            frame = self._poll_frame(polls)
        else:
            frame = self._change_frame(changes)
        if frame is not None:
            return [Batch(self._receiver.data_receiver_name, self._stream.key, frame, self._url)], False
        outage = self._session.outage()
        if outage is not None:
            raise OpcUaError(outage)
        if poll_error is not None:
            raise OpcUaError(poll_error)
        return [], False

    def _next_poll(self) -> None:
        feed, session = self._feed, self._session
        assert session is not None
        if feed.poll_pending or not session.connected:
            return
        feed.poll_pending = True
        self._engine.submit(session.poll(feed))

    # ------------------------------------------------------------------ records

    def _value(self, tag_export: str, where: str, data_value: Any) -> Any:
        """The column value of one DataValue (None when bad), reporting problems once."""
        status = data_value.StatusCode
        variant = data_value.Value
        problem = None
        value = None
        if status is not None and status.is_bad():
            problem = f"{where}: {status.name}"
        elif variant is None or variant.Value is None:
            value = None
        else:
            dtype = _dtype_of(variant)
            known = self._dtypes.get(tag_export)
            if dtype is None:
                problem = f"{where}: values of type {variant.VariantType.name} have no column type; sent as null"
            elif known is not None and known != dtype:
                problem = f"{where}: a {variant.VariantType.name} value, not {known}; sent as null"
            else:
                self._dtypes[tag_export] = dtype
                value = _python(variant.Value)
            if problem is None and status is not None and status.is_uncertain():
                self._note(tag_export, f"{where}: {status.name}", warn=True)
                return value
        if problem is None:
            self._bad.pop(tag_export, None)
        else:
            self._note(tag_export, problem)
        return value

    def _note(self, export: str, problem: str, warn: bool = False) -> None:
        if self._bad.get(export) == problem:
            return
        self._bad[export] = problem
        (self.report_warning if warn else self.report_bad_input)(problem)

    def _schema(self) -> dict[str, pl.DataType]:
        return {t.exportname: self._dtypes.get(t.exportname, pl.Null()) for t in self._stream.opcua_tags}

    def _poll_frame(self, polls: list[list[tuple[_Tag, Any]]]) -> pl.DataFrame | None:
        rows: list[dict[str, Any]] = []
        for answer in polls:
            values: dict[str, Any] = {t.exportname: None for t in self._stream.opcua_tags}
            statuses: dict[str, str] = {}
            newest: datetime | None = None
            for tag, data_value in answer:
                values[tag.export] = self._value(tag.export, tag.where, data_value)
                statuses[tag.export] = _status_name(data_value)
                stamp = _utc(data_value.SourceTimestamp) or _utc(data_value.ServerTimestamp)
                if stamp is not None and (newest is None or stamp > newest):
                    newest = stamp
            if self._receiver.on_change:
                last = {k: [_jsonable(values[k]), statuses.get(k)] for k in values}
                if last == self._last:
                    continue
                self._last = last
            rows.append({"timestamp": newest or self._ctx.now(), **values})
        if not rows:
            return None
        return pl.DataFrame(rows, schema={"timestamp": pl.Datetime("us", "UTC"), **self._schema()},
                            orient="row")

    def _change_frame(self, changes: list[tuple[str, Any]]) -> pl.DataFrame | None:
        rows: list[dict[str, Any]] = []
        where = {t.export: t.where for t in self._feed.tags}
        empty = {t.exportname: None for t in self._stream.opcua_tags}
        for export, data_value in changes:
            source = _utc(data_value.SourceTimestamp)
            server = _utc(data_value.ServerTimestamp)
            stamp = source or server or self._ctx.now()
            sent = self._sent.get(export)
            if source is not None and source.isoformat() == sent:
                continue  # this sample was sent (a new subscription's first notification)
            value = self._value(export, where[export], data_value)
            if source is not None:
                self._sent[export] = source.isoformat()
            rows.append({"timestamp": stamp, "server_timestamp": server, "status_code": _status_name(data_value),
                         **empty, export: value})
        if not rows:
            return None
        return pl.DataFrame(rows, schema={"timestamp": pl.Datetime("us", "UTC"),
                                          "server_timestamp": pl.Datetime("us", "UTC"),
                                          "status_code": pl.String(), **self._schema()}, orient="row")

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any] | None:
        if self._receiver.mode == "subscribe":
            return {"source_timestamps": dict(self._sent)}
        return {"last": self._last} if self._receiver.on_change else None

    def describe(self) -> str:
        what = f"{len(self._stream.opcua_tags)} tags on {self._url} ({self._receiver.mode})"
        if self._sent:
            what += f", last change {max(self._sent.values())}"
        return what

    def close(self) -> None:
        self._engine.detach(self._feed, self._session)
        self._session = None


def _jsonable(value: Any) -> Any:
    """``value`` as state can hold it (datetimes and bytes as text)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- browse helper


async def browse(url: str, *, depth: int = 3, root: str | None = None, username: str | None = None,
                 password: str | None = None, security: str | None = None, timeout: float = 4.0,
                 out: Any = None) -> int:
    """Print the address space under ``root`` (default: the Objects folder, without the
    Server object) to ``depth`` levels: one line per node, indented by level, with its
    NodeId, browse name, node class and, for variables, data type. Returns the number of
    nodes printed. ``security`` is ``policy,mode,certificate,private_key[,server_certificate]``,
    e.g. ``Basic256Sha256,SignAndEncrypt,cert.der,key.pem`` (the receiver's self-signed pair is
    in ``$FACTORYFLOW_HOME/components/<data_receiver_name>/pki/``).

    :raises OSError: the server cannot be reached.
    :raises asyncua.ua.UaStatusCodeError: the server refused the session or a request.
    """
    from asyncua import Client, ua

    out = out or sys.stdout
    client = Client(url, timeout=timeout)
    if username:
        client.set_user(username)
        if password:
            client.set_password(password)
    if security:
        policy, _, rest = security.partition(",")
        certificate = rest.split(",")[1] if rest.count(",") >= 1 else None
        uri = _certificate_uri(Path(certificate)) if certificate else None
        if uri is not None:
            client.application_uri = uri
        await client.set_security_string(f"{policy.replace('_', '')},{rest}")
    printed = 0
    type_names: dict[str, str] = {}
    async with client:
        start = client.get_node(root) if root else client.nodes.objects
        skip = set() if root else {ua.NodeId(ua.ObjectIds.Server)}
        print(f"{'NodeId':<48} {'BrowseName':<36} {'NodeClass':<10} DataType", file=out)

        async def walk(node: Any, level: int) -> None:
            nonlocal printed
            for child in await node.get_children():
                if child.nodeid in skip:
                    continue
                name = (await child.read_browse_name()).to_string()
                node_class = await child.read_node_class()
                data_type = ""
                if node_class == ua.NodeClass.Variable:
                    type_id = await child.read_data_type()
                    key = type_id.to_string()
                    if key not in type_names:
                        type_names[key] = (await client.get_node(type_id).read_browse_name()).Name
                    data_type = type_names[key]
                    rank = await child.read_value_rank()
                    data_type += "[]" * max(rank, 0) if rank > 0 else ""
                print(f"{'  ' * level + child.nodeid.to_string():<48} {name:<36} {node_class.name:<10} "
                      f"{data_type}".rstrip(), file=out)
                printed += 1
                if level + 1 < depth and node_class in (ua.NodeClass.Object, ua.NodeClass.View):
                    await walk(child, level + 1)

        await walk(start, 0)
    return printed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m connectors.receivers.opcua browse opc.tcp://host:port [--depth N] [--root NodeId]
    [--username U --password P] [--security policy,mode,cert,key[,server_cert]]``:
    prints the address space so a user can write ``opcua_tags``. Exit status 0, or 1 with
    the reason when the server cannot be browsed."""
    parser = argparse.ArgumentParser(prog="python -m connectors.receivers.opcua",
                                     description="Tools for the opcua receiver.")
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("browse", help="print the address space as NodeIds, browse names and data types")
    b.add_argument("url", help="endpoint URL, e.g. opc.tcp://127.0.0.1:4840")
    b.add_argument("--depth", type=int, default=3, help="levels below the root (default 3)")
    b.add_argument("--root", help="NodeId to start from (default: the Objects folder)")
    b.add_argument("--username")
    b.add_argument("--password")
    b.add_argument("--security", help="policy,mode,certificate,private_key[,server_certificate], e.g. "
                                      "Basic256Sha256,SignAndEncrypt,cert.der,key.pem")
    b.add_argument("--timeout", type=float, default=4.0, help="seconds per request (default 4)")
    args = parser.parse_args(argv)
    try:
        count = asyncio.run(browse(args.url, depth=args.depth, root=args.root, username=args.username,
                                   password=args.password, security=args.security, timeout=args.timeout))
    except Exception as exc:  # noqa: BLE001 - a command-line tool: say why and exit 1
        print(f"browse {args.url}: {_explain(exc)}", file=sys.stderr)
        return 1
    print(f"{count} nodes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
