"""The ``opcua`` receiver's session engine: one asyncio event loop per receiver and
process, on its own thread, holding one asyncua client per connection, and what it
hands the streams' readers.

bytewax's ``next_batch`` never waits for the server: the loop keeps running between
polls, as OPC UA needs (keep-alive probes, Publish requests, channel renewal,
reconnects), which is why it does not run inside ``next_batch`` the way bytewax's
``batch_async`` bridge would run it. A reader only takes what its :class:`Feed` gathered
and, in poll mode, asks for the next Read.

Also here: OPC UA values as polars values (:func:`dtype_of`, :func:`python_value`).
Implements the client side of OPC UA Part 4 (Read, CreateSubscription,
CreateMonitoredItems, Publish) and Part 6's certificates; see
:mod:`connectors.receivers.opcua` for the keys and guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from dataflows.sdk import Backoff, RunContext

if TYPE_CHECKING:  # asyncua loads when a stream runs, not when the config does
    from asyncua import Client, ua

    from connectors.receivers.opcua import OpcUaConnection, OpcUaReceiver, OpcUaStream, OpcUaTag

__all__ = ["MAX_BUFFERED_CHANGES", "RECONNECT_MAX_DELAY", "Engine", "EngineSlot", "Feed", "OpcUaError",
           "ResolvedTag", "Session", "certificate_uri", "dtype_of", "explain", "python_value", "status_name",
           "utc"]

_log = logging.getLogger("receiver.opcua")
# asyncua logs every request and publish at INFO; the receiver logs what a user needs
logging.getLogger("asyncua").setLevel(logging.WARNING)

#: The first connection attempts, and asyncua's reconnects, wait 1 s doubling up to this.
RECONNECT_MAX_DELAY = 5.0
#: Data changes a subscribing stream holds for the dataflow at most (memory stays bounded
#: when the dataflow stops taking them).
MAX_BUFFERED_CHANGES = 100_000


class OpcUaError(Exception):
    """The server cannot be reached or refused the session (retried; marks the stream)."""


def dtype_of(variant: ua.Variant) -> pl.DataType | None:
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


def python_value(value: Any) -> Any:
    """A decoded OPC UA value as a plain Python value of its column (lists kept as lists)."""
    from asyncua import ua

    if isinstance(value, list):
        return [python_value(v) for v in value]
    if isinstance(value, datetime):
        return utc(value)
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


def status_name(data_value: ua.DataValue) -> str:
    """The name of a DataValue's status code (``Good`` when it has none)."""
    return data_value.StatusCode.name if data_value.StatusCode is not None else "Good"


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class ResolvedTag:
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
class Feed:
    """What the event loop hands one stream's reader; shared by two threads under ``lock``.

    :ivar changes: subscribe mode: ``(export, DataValue)`` per data change, oldest first.
    :ivar polls: poll mode: the answers to Read calls not yet taken: (tags, DataValues).
    :ivar reports: ``(level, message)`` for the stream's markers (``error``: bad input).
    """

    stream: OpcUaStream
    tags: list[ResolvedTag]
    lock: threading.Lock = field(default_factory=threading.Lock)
    changes: list[tuple[str, Any]] = field(default_factory=list)
    polls: list[list[tuple[ResolvedTag, Any]]] = field(default_factory=list)
    reports: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0  # data changes dropped since the reader last looked
    poll_pending: bool = False
    poll_error: str | None = None
    resolved: bool = False
    subscription: Any = None  # asyncua Subscription

    def report(self, level: str, message: str) -> None:
        with self.lock:
            self.reports.append((level, message))


class Session:
    """One asyncua client on one connection, for the streams that use it; lives on the
    engine's event loop."""

    def __init__(self, receiver: OpcUaReceiver, conn: OpcUaConnection, ctx: RunContext) -> None:
        self.receiver = receiver
        self.conn = conn
        self.ctx = ctx
        self.feeds: list[Feed] = []
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

    async def add(self, feed: Feed) -> None:
        self.feeds.append(feed)
        if self._ready:
            await self._set_up(feed)

    async def remove(self, feed: Feed) -> None:
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
                self.problem = explain(exc)
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
            uri = certificate_uri(cert)
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
        self.problem = explain(exc)
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

    async def _set_up(self, feed: Feed) -> None:
        await self._resolve(feed)
        if self.receiver.mode == "subscribe":
            await self._subscribe(feed)

    async def _resolve(self, feed: Feed) -> None:
        """Each tag's NodeId, checked with one Read of the nodes' NodeClass; a tag whose node
        does not exist marks the stream."""
        from asyncua import ua

        assert self.client is not None
        client = self.client
        candidates: list[tuple[ResolvedTag, Any]] = []
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

    async def _subscribe(self, feed: Feed) -> None:
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

    async def poll(self, feed: Feed) -> None:
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
                feed.poll_error = f"{self.conn.url}: Read failed: {explain(exc)}"
        finally:
            feed.poll_pending = False


class _ChangeHandler:
    """asyncua's subscription handler: each data change goes to the feed, under each export
    name of its node. At most :data:`MAX_BUFFERED_CHANGES` wait there (a dataflow that stopped
    taking them); beyond, the oldest are dropped and the stream is warned."""

    def __init__(self, feed: Feed) -> None:
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


def explain(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, TimeoutError | asyncio.TimeoutError) and not text:
        return "no answer (timeout)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def certificate_uri(path: Path) -> str | None:
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


class EngineSlot:
    """Where the receiver's streams in this process find their one :class:`Engine`
    (:meth:`OpcUaReceiver.open_worker`): made when the first stream opens, and made anew
    for a stream opened after the last one closed it. No I/O."""

    def __init__(self, receiver: OpcUaReceiver, ctx: RunContext) -> None:
        self._receiver = receiver
        self._ctx = ctx
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def engine(self) -> Engine:
        """The engine the next stream attaches to."""
        with self._lock:
            if self._engine is None or self._engine.closed:
                self._engine = Engine(self._receiver, self._ctx)
            return self._engine


class Engine:
    """One receiver's event loop thread on one worker, with a :class:`Session` per
    connection in use; started by the first read, stopped when its last stream closes."""

    def __init__(self, receiver: OpcUaReceiver, ctx: RunContext) -> None:
        self.receiver = receiver
        self.ctx = ctx
        self.closed = False
        self._users = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sessions: dict[int, Session] = {}

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

    def session(self, index: int, feed: Feed) -> Session:
        """The session of connection ``index`` (started on first use), with ``feed`` added."""
        with self._lock:
            session = self._sessions.get(index)
            new = session is None
            if session is None:
                session = self._sessions[index] = Session(self.receiver, self.receiver.connections[index],
                                                           self.ctx)

        async def add() -> None:
            if new:
                session.start()
            await session.add(feed)

        self.submit(add())
        return session

    def detach(self, feed: Feed | None, session: Session | None) -> None:
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
            _log.warning("closing the OPC UA session: %s", explain(exc))
