"""The ``opcua`` receiver's session engine: one asyncio event loop per receiver and
process, on its own thread, holding one asyncua client per connection, and what it
hands the streams' readers.

bytewax's ``next_batch`` never waits for the server: the loop keeps running between
polls, as OPC UA needs (keep-alive probes, Publish requests, channel renewal,
reconnects), which is why it does not run inside ``next_batch`` the way bytewax's
``batch_async`` bridge would run it. A reader only takes what its :class:`Feed` gathered
and, in poll mode, asks for the next Read.

asyncua reconnects a lost session on its own (ActivateSession on a new channel,
TransferSubscriptions, then Republish of the notifications the server still holds);
the engine watches it through asyncua's ``Observer``: one log line when a connection is
lost and one when it is back, and, when asyncua had to create a subscription again, a
backfill of the gap from the server's history (:mod:`connectors._opcua_history`).
What the readers take is in :mod:`connectors._opcua_feed`, the words for failures in
:mod:`connectors._opcua_errors`.

Implements the client side of OPC UA Part 4 (Read, CreateSubscription,
CreateMonitoredItems, Publish, HistoryRead) and Part 6's certificates; see
:mod:`connectors.receivers.opcua` for the keys and guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectors._opcua_errors import (
    TRUST_CODES,
    USER_CODES,
    certificate_uri,
    code_name,
    explain,
    status_text,
    trust_hint,
)
from connectors._opcua_feed import Feed, ResolvedTag, consume, source_of
from connectors._opcua_history import start_backfill
from dataflows.sdk import Backoff, RunContext

if TYPE_CHECKING:  # asyncua loads when a stream runs, not when the config does
    from asyncua import Client

    from connectors.receivers.opcua import Monitoring, OpcUaConnection, OpcUaReceiver

__all__ = ["RECONNECT_MAX_DELAY", "Engine", "EngineSlot", "OpcUaError", "Session"]

_log = logging.getLogger("receiver.opcua")
# asyncua logs every request at INFO and, while a server is down, a traceback per retry
# (its publish loop: one a second); the engine logs what a user needs: one line when a
# connection is lost, one when it is back, and what was backfilled
logging.getLogger("asyncua").setLevel(logging.CRITICAL)

#: The first connection attempts, and asyncua's reconnects, wait 1 s doubling up to this.
RECONNECT_MAX_DELAY = 5.0
#: Monitored items asked for per CreateMonitoredItems call.
MONITORED_ITEMS_PER_CALL = 1000


class OpcUaError(Exception):
    """The server cannot be reached or refused the session (retried; marks the stream)."""


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
        self._lost_at: float | None = None  # when the connection was lost (monotonic seconds)
        # how far the connection attempt under way got: its socket opened, its secure channel opened
        self._socket_opened = self._channel_opened = False
        self._certificate: Path | None = None  # the client certificate, with security
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
        for task in (feed.backfill, feed.consumer):
            if task is not None:
                task.cancel()
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
                problem = self._diagnose(exc)
                attempt += 1
                delay = Backoff(initial=1.0, maximum=RECONNECT_MAX_DELAY, jitter=0.5).delay(attempt)
                # one line when the attempts start failing, and one when the cause changes
                _log.log(logging.ERROR if problem != self.problem else logging.DEBUG,
                         "%s: connecting failed (attempt %d, retrying in %.1f s): %s",
                         self.conn.url, attempt, delay, problem)
                self.problem = problem
                await self._drop_client()
                try:
                    await asyncio.wait_for(self._closing.wait(), delay)
                except TimeoutError:
                    pass
                continue
            if attempt:
                _log.info("%s: connected after %d failed attempts", self.conn.url, attempt)
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
        client.uaclient.observer = _observer(self)
        self._socket_opened = self._channel_opened = False
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
            self._certificate = cert
            uri = certificate_uri(cert)
            if uri is not None:
                client.application_uri = uri
        else:
            pki = self.ctx.component_dir(self.receiver.data_receiver_name) / "pki"
            cert, key = pki / "client_certificate.der", pki / "client_private_key.pem"
            new = not cert.exists()
            self._certificate = cert
            await client.setup_self_signed_certificate(key, cert)
            if new:
                _log.warning("%s: made a self-signed client certificate, %s; the server must "
                             "trust it", self.conn.url, cert)
        await client.set_security(policy, str(cert), str(key), server_certificate=self.conn.server_certificate,
                                  mode=getattr(ua.MessageSecurityMode, self.conn.security_mode))

    async def _lost(self, exc: Exception) -> None:
        self.problem = explain(exc)
        self._lost_at = self._lost_at or asyncio.get_running_loop().time()
        _log.error("%s: connection lost (%s); reconnecting", self.conn.url, self.problem)

    def _diagnose(self, exc: BaseException) -> str:
        """Why a connection attempt failed, with what to do where the status code says."""

        text, name = explain(exc), code_name(exc)
        secure = self.conn.security_mode != "None"
        if secure and self._certificate is not None and name in TRUST_CODES:
            return f"{text} ({trust_hint(self._certificate)})"
        if name in USER_CODES:
            return (f"{text} (user {self.conn.username!r}: check username and password, and that the "
                    "server allows this user)" if self.conn.username else
                    f"{text} (the server does not take anonymous sessions: set username and password)")
        if name in ("BadSecurityModeRejected", "BadSecurityPolicyRejected"):
            return (f"{text} (the server has no endpoint with security_mode {self.conn.security_mode}"
                    f"{' and ' + self.policy_name if secure else ''}: `python -m connectors.receivers.opcua "
                    "browse` lists what it offers)")
        if (name is None and secure and self._certificate is not None
                and self._socket_opened and not self._channel_opened and not isinstance(exc, OSError | TimeoutError)):
            # the server closed the channel as it opened: asyncua cannot read the fault it
            # sent (node-opcua sends BadSecurityChecksFailed), so say what it most likely is
            return (f"the server closed the secure channel as it opened ({self.conn.security_mode}, "
                    f"{self.policy_name}); most likely {trust_hint(self._certificate)} [{text}]")
        return text

    def state_changed(self, state: Any) -> None:
        """asyncua's client changed state (its observer, on the loop): the connection
        attempt's progress, and one line when a lost connection is back."""
        from asyncua.client.ua_client import UaClientState

        if state in (UaClientState.SOCKET_OPEN, UaClientState.CHANNEL_OPEN, UaClientState.CONNECTED):
            self._socket_opened = True
            self._channel_opened = self._channel_opened or state is not UaClientState.SOCKET_OPEN
        if state is UaClientState.CONNECTED and self._lost_at is not None:
            _log.info("%s: connection back after %.1f s", self.conn.url,
                      asyncio.get_running_loop().time() - self._lost_at)
            self._lost_at = None
            if self.receiver.mode == "poll":  # the polls missed: from history (subscriptions: recreated())
                for feed in self.feeds:
                    if feed.backfillable():
                        start_backfill(self, feed, "polls missed while the connection was lost")

    def recreated(self, subscription_id: int | None) -> None:
        """asyncua created a stream's subscription again (the server lost it: a restart, an
        expired session): what changed meanwhile is read from history."""
        for feed in self.feeds:
            if feed.subscription is not None and feed.subscription.subscription_id == subscription_id:
                _log.warning("%s: the server lost the subscription; subscribed again", feed.stream.key)
                start_backfill(self, feed, "the subscription was created again")

    async def _drop_client(self) -> None:
        client, self.client, self._ready = self.client, None, False
        for feed in self.feeds:
            feed.resolved, feed.subscription = False, None
            for task in (feed.backfill, feed.consumer):  # the next session backfills again (changes stay held)
                if task is not None:
                    task.cancel()
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
        elif feed.backfillable():
            start_backfill(self, feed, "since the last poll sent")

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
        numeric: list[tuple[ResolvedTag, Any]] = []  # a numeric-looking string id, as a number
        for tag in feed.tags:
            name = tag.config.name.strip()
            if tag.config.form == "string" and name.isdigit() and int(name) < 2**32:
                spaces = [tag.config.namespace_index] if tag.config.namespace_index is not None else range(
                    1, namespaces)
                numeric += [(tag, ua.NodeId(int(name), ns)) for ns in spaces]
        asked = candidates + numeric
        answers = await _read(client, [n for _, n in asked], ua.AttributeIds.NodeClass)
        suggestions: dict[int, Any] = {}
        for (tag, node_id), answer in zip(numeric, answers[len(candidates):], strict=True):
            if answer.StatusCode.is_good():
                suggestions.setdefault(id(tag), node_id)
        for (tag, node_id), answer in zip(candidates, answers[:len(candidates)], strict=True):
            if tag.node_id is not None:
                continue  # found in an earlier namespace
            if answer.StatusCode.is_good():
                tag.node_id = node_id
            elif tag.config.form == "string" and tag.config.namespace_index is None:
                tag.problem = f"no namespace holds a node with the string identifier {tag.config.name!r}"
            else:
                tag.problem = status_text(answer.StatusCode.value)
        for tag in feed.tags:
            hint = suggestions.get(id(tag))
            if tag.node_id is None and hint is not None:
                tag.problem = (f"{tag.problem or 'BadNodeIdUnknown'}; the server has the numeric NodeId "
                               f"{hint.to_string()}: write the name as {hint.to_string()!r}")
        for tag in feed.tags:
            if tag.node_id is None:
                tag.problem = tag.problem or "BadNodeIdUnknown"
                tag.node_id = tag.config.node_id()  # a named node is read on: it may come back
                if tag.reported != tag.problem:
                    feed.report("error", f"{tag.where}: {tag.problem}")
                tag.reported = tag.problem
        found = [t for t in feed.tags if t.node_id is not None and t.problem is None]
        historizing = await _read(client, [t.node_id for t in found], ua.AttributeIds.Historizing)
        for tag, answer in zip(found, historizing, strict=True):
            tag.historizing = bool(answer.StatusCode.is_good() and answer.Value is not None and answer.Value.Value)
        feed.resolved = True

    async def _subscribe(self, feed: Feed) -> None:
        from asyncua import ua

        assert self.client is not None
        receiver = self.receiver
        tags = [t for t in feed.tags if t.node_id is not None]
        backfill = receiver.history_backfill and feed.backfillable()
        if backfill:  # started from state, or set up again: what changed meanwhile comes first
            feed.hold()
        publishing = receiver.publishing_of(feed.stream)
        # asyncua's iterator API (no handler): an unbounded queue the consumer task drains
        subscription = await self.client.create_subscription(publishing * 1000, queue_maxsize=0)
        feed.consumer = asyncio.get_running_loop().create_task(consume(feed, subscription))
        requests = [_monitored_item(t.node_id, index + 1, receiver.monitoring_of(feed.stream, t.config))
                    for index, t in enumerate(tags)]
        handles: list[Any] = []
        for start in range(0, len(requests), MONITORED_ITEMS_PER_CALL):
            handles += await subscription.create_monitored_items(requests[start:start + MONITORED_ITEMS_PER_CALL])
        for tag, handle in zip(tags, handles, strict=True):
            if isinstance(handle, ua.StatusCode) and tag.reported != handle.name:
                tag.reported = handle.name
                feed.report("error", f"{tag.where}: {status_text(handle.value)}")
        feed.subscription = subscription
        _log.info("%s: %s subscribed to %d tags (publishing every %s s, %d historizing)", self.conn.url,
                  feed.stream.key, len(tags), publishing, sum(t.historizing for t in tags))
        if backfill:
            start_backfill(self, feed, "since the last change sent")

    async def poll(self, feed: Feed) -> None:
        """One Read of every node of ``feed``; the answer (or the error) goes to the feed."""
        from asyncua import ua

        try:
            if self.client is None or not self._ready:
                raise OpcUaError(self.outage() or f"{self.conn.url}: not connected")
            if not feed.resolved:
                await self._resolve(feed)
            tags = [t for t in feed.tags if t.node_id is not None]
            answers = await _read(self.client, [t.node_id for t in tags], ua.AttributeIds.Value,
                                  ua.TimestampsToReturn.Both)
            if any(a.StatusCode.value in (ua.StatusCodes.BadNodeIdUnknown, ua.StatusCodes.BadNodeIdInvalid)
                   for a in answers):
                feed.resolved = False  # the address space changed: resolve again at the next poll
            with feed.lock:
                feed.polls.append(list(zip(tags, answers, strict=True)))
                feed.poll_error = None
                for tag, answer in zip(tags, answers, strict=True):  # where a backfill starts
                    feed.advance(tag.export, source_of(answer))
        except Exception as exc:  # noqa: BLE001 - the reader raises it as the stream's failure
            with feed.lock:
                feed.poll_error = f"{self.conn.url}: Read failed: {explain(exc)}"
        finally:
            feed.poll_pending = False


def _monitored_item(node_id: Any, handle: int, monitoring: Monitoring) -> Any:
    """A MonitoredItemCreateRequest of ``node_id``'s Value (OPC UA Part 4 §5.12.2), with a
    DataChangeFilter when there is a deadband."""
    from asyncua import ua

    parameters = ua.MonitoringParameters(
        ClientHandle=handle, SamplingInterval=monitoring.sampling * 1000, QueueSize=monitoring.queue,
        DiscardOldest=monitoring.discard_oldest)
    if monitoring.deadband_type != "None":
        parameters.Filter = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue, DeadbandType=getattr(ua.DeadbandType, monitoring.deadband_type),
            DeadbandValue=monitoring.deadband_value)
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=node_id, AttributeId=ua.AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=parameters)


async def _read(client: Client, node_ids: list[Any], attribute: Any, timestamps: Any = None) -> list[Any]:
    """One Read service call of ``attribute`` of each node (DataValues, in order), with
    ``timestamps`` (a TimestampsToReturn; None: the default, Source)."""
    from asyncua import ua

    if not node_ids:
        return []
    params = ua.ReadParameters()
    if timestamps is not None:
        params.TimestampsToReturn = timestamps
    for node_id in node_ids:
        params.NodesToRead.append(ua.ReadValueId(NodeId=node_id, AttributeId=attribute))
    return await client.uaclient.read(params)


def _observer(session: Session) -> Any:
    """An asyncua ``Observer`` telling ``session`` of state changes and subscriptions
    created again (asyncua calls it on the loop)."""
    from asyncua.observer import Observer, SubscriptionEvent

    class Watch(Observer):
        def observe_request(self, request: Any) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext()

        def on_state_change(self, state: Any) -> None:
            session.state_changed(state)

        def on_subscription_event(self, subscription_id: int | None, event: SubscriptionEvent) -> None:
            if event is SubscriptionEvent.RECREATED:
                session.recreated(subscription_id)

    return Watch()


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
