"""The ``mqtt`` receiver's broker session: one paho client for the receiver's streams in a
process, and the SQLite buffer every message is committed to before it is acknowledged.

Group commits: paho's network thread queues each message as it arrives
(:meth:`BufferedSession._on_message`) and, once the socket holds no more to read (or
:data:`GROUP_MAX` are queued), writes the queue in one transaction (one fsync) and then sends
those messages' PUBACKs, in the order they arrived (paho 2's ``manual_ack``). So a burst
shares one commit, a lone message waits for no timer, and everything stays on paho's thread
(a committer thread of its own, taking turns with paho's for the GIL, buffered 7,000 to
11,000 messages/s where paho alone received 12,000 to 16,000). What the socket's other
packets (a PINGRESP) leave queued, the session's lingering thread commits after
:data:`LINGER` seconds. Nothing is acknowledged before it is on disk; what was committed but
not acknowledged (a crash, a lost connection) comes again with DUP set and is recognised by
its packet identifier and digest.

paho's own network thread (``loop_start``) holds the connection: MQTT needs answers
between polls (PINGREQ for the keep-alive, a PUBACK per message), so the connection
cannot live only inside ``next_batch`` the way bytewax's async bridge would run it. The
streams' readers only take what the buffer holds (:meth:`BufferedSession.take`) and
delete what every transmit acknowledged (:meth:`BufferedSession.forget`).

Implements the receiving half of MQTT 3.1.1 and 5 at QoS 1 on a persistent session (see
:mod:`connectors.receivers.mqtt` for what is and is not guaranteed).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import select
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connectors._mqtt import new_client, topic_matches
from connectors._sparkplug import SPARKPLUG_NAMESPACE
from connectors._sparkplug_host import state_payload
from dataflows.sdk import RunContext, Storage

if TYPE_CHECKING:
    from connectors.receivers.mqtt import MqttReceiver

__all__ = ["BufferedSession", "Message", "SessionSlot"]

_BUFFER_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS messages_stream ON messages (stream, id);
CREATE TABLE IF NOT EXISTS subscriptions (topic_filter TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS packets (mid INTEGER PRIMARY KEY, digest BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readers (stream TEXT PRIMARY KEY, last_id INTEGER NOT NULL, state BLOB NOT NULL);
"""


_SHARED_LOCK = threading.Lock()  # the partitions of several workers open streams at once
#: Messages at most in one commit of the buffer.
GROUP_MAX = 2000
#: Seconds a queued message waits, when nothing more arrives, before the lingering thread commits it.
LINGER = 0.005


def _insert(db: Storage, sql: str, rows: list[tuple[Any, ...]], per_statement: int = 200) -> None:
    """``sql`` (``INSERT … VALUES``) for ``rows``, ``per_statement`` rows to a statement
    (200 rows of 4 values stay under SQLite's oldest limit of 999 variables): the sqlite3
    module gives up the GIL and takes it back once per statement, where ``executemany`` does
    so once per row."""
    if not rows:
        return
    marks = "(" + ", ".join("?" * len(rows[0])) + ")"
    for first in range(0, len(rows), per_statement):
        chunk = rows[first:first + per_statement]
        db.execute(sql + ", ".join([marks] * len(chunk)), [value for row in chunk for value in row])


class SessionSlot:
    """Where the receiver's streams in this process find their one :class:`BufferedSession`
    (the receiver's ``open_worker``): made when the first stream opens, and made anew for a
    stream opened after the last one released it. No I/O."""

    def __init__(self, receiver: MqttReceiver, ctx: RunContext) -> None:
        self._receiver = receiver
        self._ctx = ctx
        self._session: BufferedSession | None = None

    def acquire(self) -> BufferedSession:
        """The session, counting one more reader (who calls its ``release``)."""
        with _SHARED_LOCK:
            if self._session is None or self._session.closed:
                self._session = BufferedSession(self._receiver, self._ctx)
            self._session.users += 1
            return self._session


@dataclass(frozen=True)
class Message:
    """A buffered message: its id in the buffer, topic, payload and arrival (seconds since
    the epoch, UTC)."""

    id: int
    topic: str
    payload: bytes
    received: float  # seconds since the epoch, UTC


class BufferedSession:
    """One paho client for the streams of a receiver in this process, buffering every
    message it receives in SQLite before paho acknowledges it. Started on first use."""

    def __init__(self, receiver: MqttReceiver, ctx: RunContext) -> None:
        self.receiver = receiver
        self.users = 0
        self.closed = False
        self._ctx = ctx
        self._log = logging.getLogger(f"receiver.{receiver.data_receiver_name}")
        self._lock = threading.Lock()
        self._filters = {str(s.key): receiver.topic_filter(s) for s in receiver.streams}
        self._connected = False
        self._gone = threading.Event()  # the network connection closed
        self._problem: str | None = None
        self._buffer_error: str | None = None  # why the last message could not be buffered
        self._subscription_error: str | None = None  # which filters the broker refused
        self._subscribing: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its filters
        self._unmatched: set[str] = set()
        self._routes: dict[str, list[str]] = {}  # topic -> the streams whose filters match it
        self._db: Storage | None = None
        self._client: Any = None
        self._started = False
        self._state_at = 0  # the Primary Host's STATE timestamp (ms), its birth's and its Will's
        #: (client, message, topic, streams, time.monotonic() queued, epoch): received, not yet committed
        self._queue: list[tuple[Any, Any, str, list[str], float, int]] = []
        self._queued = threading.Condition()
        self._epoch = 0  # one more per connection: a PUBACK goes only on the connection its message came on
        self._failed_epoch = -1  # the connection whose messages could not be buffered: the rest of it is dropped
        self._committing = threading.Lock()  # one commit at a time: the buffer and the PUBACKs keep their order
        self._readable: tuple[Any, Any] = (None, None)  # (socket, its select.poll)
        self._stopping = False
        self._committer: threading.Thread | None = None
        #: Names this buffer file: a stream's state counts message ids in one generation.
        self.generation: str | None = None

    @property
    def where(self) -> str:
        """The broker, for messages: ``host:port``."""
        return f"{self.receiver.host}:{self.receiver.port}"

    def start(self) -> None:
        """Open the buffer and connect in the background (paho's network thread)."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._db = self._ctx.storage(self.receiver.data_receiver_name, "messages.sqlite", _BUFFER_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', ?)", (uuid.uuid4().hex,))
            (self.generation,) = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            receiver = self.receiver
            client_id = receiver.client_id or f"factoryflow-{receiver.data_receiver_name}"
            client, connect = new_client(receiver, client_id, session_expiry=receiver.session_expiry_interval,
                                         manual_ack=True)
            if receiver.sparkplug_host_id is not None:  # Primary Host Application (Sparkplug 3.0, 7.1)
                self._state_at = int(time.time() * 1000)
                client.will_set(self.state_topic, state_payload(False, self._state_at), qos=1, retain=True)
            client.on_connect = self._guarded(self._on_connect, "the CONNACK")
            client.on_connect_fail = self._guarded(self._on_connect_fail, "a failed connection attempt")
            client.on_disconnect = self._guarded(self._on_disconnect, "the disconnection")
            client.on_subscribe = self._guarded(self._on_subscribe, "the SUBACK")
            client.on_message = self._guarded(self._on_message, "a PUBLISH")
            self._committer = threading.Thread(target=self._linger_loop, daemon=True,
                                               name=f"mqtt-buffer-{receiver.data_receiver_name}")
            self._committer.start()
            client.connect_async(receiver.host, receiver.port, **connect)
            client.loop_start()
            self._client = client
            self._log.info("connecting to %s as client %r", self.where, client_id)

    def outage(self) -> str | None:
        """Why the session is down, or None while it is up (or still connecting the first time)."""
        for failure in (self._buffer_error, self._subscription_error):
            if failure is not None:
                return f"{self.where}: {failure}"
        return None if self._connected else self._problem

    # ------------------------------------------------------------------ paho's thread

    def _guarded(self, callback: Any, handling: str) -> Any:
        """``callback`` as paho's thread calls it on ``handling`` (what it received). paho
        re-raises what a callback raises, which would end that thread and with it every
        reconnection, silently (a buffer write in ``on_connect`` on a failing disk, anything
        unforeseen): :meth:`_broken` instead."""
        what = f"handling {handling} failed"

        def guarded(client: Any, *args: Any) -> None:
            try:
                callback(client, *args)
            except Exception as exc:  # noqa: BLE001 - any error: the connection is cut and made again
                self._broken(client, what, exc)

        return guarded

    def _broken(self, client: Any, what: str, exc: Exception) -> None:
        """``what`` failed with ``exc``: say so once as the session's outage (the streams'
        marker) and cut the connection; paho connects again with its backoff, and the broker
        sends again everything not acknowledged."""
        self._connected, self._failed_epoch = False, self._epoch  # the rest of this connection's queue: dropped
        self._problem = f"{self.where}: {what} ({type(exc).__name__}: {exc}); reconnecting"
        self._log.error("%s", self._problem)
        with contextlib.suppress(OSError, AttributeError):
            client.socket().shutdown(socket.SHUT_RDWR)

    def _on_connect(self, client: Any, _userdata: Any, flags: Any, rc: Any, _properties: Any = None) -> None:
        if rc.is_failure:
            self._problem = f"{self.where}: the broker refused the connection: {rc}"
            self._log.error("%s", self._problem)
            return
        with self._queued:
            self._epoch += 1
        wanted = set(self._filters.values())
        present = bool(flags.session_present)
        with self._lock:
            stored = {row[0] for row in self._db.execute("SELECT topic_filter FROM subscriptions")}
        # a kept session holds its subscriptions: subscribing again would resend retained messages
        subscribe = sorted(wanted - stored) if present else sorted(wanted)
        stale = sorted(stored - wanted) if present else []
        if stale:
            client.unsubscribe(stale)
        if subscribe:
            _, mid = client.subscribe([(topic_filter, self.receiver.qos) for topic_filter in subscribe])
            self._subscribing[mid] = subscribe
        with self._lock:
            with self._db.transaction():
                self._db.execute("DELETE FROM subscriptions")
                self._db.executemany("INSERT INTO subscriptions VALUES (?)", [(f,) for f in wanted])
        if self.receiver.sparkplug_host_id is not None:
            client.publish(self.state_topic, state_payload(True, self._state_at), qos=1, retain=True)
        self._connected, self._problem = True, None
        self._gone.clear()
        self._log.info("connected to %s (%s session); subscribed to %s", self.where,
                       "kept" if present else "new", ", ".join(subscribe) or "nothing new")

    def _on_subscribe(self, _client: Any, _userdata: Any, mid: int, granted: Any,
                      _properties: Any = None) -> None:
        filters = self._subscribing.pop(mid, [])
        refused = [(f, g.value) for f, g in zip(filters, granted, strict=False) if g.is_failure]
        if refused:  # not kept as subscribed: the next connection asks again
            with self._lock:
                self._db.executemany("DELETE FROM subscriptions WHERE topic_filter = ?", [(f,) for f, _ in refused])
            self._subscription_error = (f"the broker refused the subscription to "
                                        f"{', '.join(repr(f) for f, _ in refused)} ({refused[0][1]})")
            self._log.error("%s: %s", self.where, self._subscription_error)
        else:
            self._subscription_error = None

    def _on_connect_fail(self, _client: Any, _userdata: Any) -> None:
        self._problem = f"{self.where}: cannot connect (no broker answers there); retrying"
        self._log.warning("%s", self._problem)

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, rc: Any, _properties: Any = None) -> None:
        was_connected, self._connected = self._connected, False
        self._gone.set()
        if was_connected and not self.closed:  # a refused connection keeps the refusal's reason
            self._problem = f"{self.where}: connection lost ({rc}); reconnecting"
            self._log.warning("%s", self._problem)

    def _on_message(self, client: Any, _userdata: Any, message: Any) -> None:
        """Queue ``message``, and commit the queue unless more is waiting on the socket (paho's
        thread): it is acknowledged once it is in the buffer for every stream whose filter
        matches its topic (a message no filter matches is dropped, and acknowledged in its
        turn)."""
        topic = message.topic
        streams = self._routes.get(topic)
        if streams is None:
            streams = [key for key, topic_filter in self._filters.items() if topic_matches(topic_filter, topic)]
            if len(self._routes) >= 10_000:
                self._routes.clear()
            self._routes[topic] = streams
            if not streams and topic not in self._unmatched and len(self._unmatched) < 1000:
                self._unmatched.add(topic)
                self._log.warning("a message on %r matches no stream's topic filter; dropped", topic)
        with self._queued:
            self._queue.append((client, message, topic, streams, time.monotonic(), self._epoch))
            if len(self._queue) < GROUP_MAX and self._more_to_read(client):
                if len(self._queue) == 1:  # the lingering thread's wait starts
                    self._queued.notify()
                return
        self._flush()

    def _more_to_read(self, client: Any) -> bool:
        """Whether ``client``'s socket has more to read right now (TLS: or its decrypted buffer)."""
        sock = client.socket()
        if sock is None:
            return False
        if hasattr(sock, "pending") and sock.pending():
            return True
        if self._readable[0] is not sock:
            poll = select.poll()  # not select.select: a process of 10,000 streams has descriptors past 1024
            poll.register(sock, select.POLLIN)
            self._readable = (sock, poll)
        return bool(self._readable[1].poll(0))

    def _flush(self) -> None:
        """Commit and acknowledge what is queued (one commit at a time, in order); an error
        the commit did not foresee cuts the connection (:meth:`_broken`), whichever thread
        committed."""
        with self._committing:
            with self._queued:
                batch, self._queue = self._queue, []
            if batch:
                try:
                    self._commit(batch)
                except Exception as exc:  # noqa: BLE001 - what was not acknowledged is sent again
                    self._broken(batch[-1][0], "committing the buffer failed", exc)

    def _linger_loop(self) -> None:
        """The lingering thread: a queue that nothing was added to for :data:`LINGER` s is
        committed here (paho's thread commits while messages keep coming); at
        :meth:`release`, the rest, then it ends."""
        while True:
            with self._queued:
                while not self._queue and not self._stopping:
                    self._queued.wait()
                if self._stopping:
                    break
                quiet = time.monotonic() - self._queue[-1][4]
            if quiet < LINGER:
                time.sleep(LINGER - quiet)
            else:
                self._flush()
        self._flush()

    def _commit(self, batch: list[tuple[Any, Any, str, list[str], float, int]]) -> None:
        """Write ``batch`` to the buffer in one transaction, then send its PUBACKs in order.
        A message sent again with DUP set whose packet identifier and digest the buffer (or
        this batch) holds already is acknowledged, not buffered twice. After a failed write, the
        rest of that connection's messages are dropped unacknowledged (the broker sends them all
        again, in their order, on the next connection)."""
        batch = [entry for entry in batch if entry[5] != self._failed_epoch]
        if not batch:
            return
        rows: list[tuple[str, str, bytes, float]] = []
        packets: dict[int, bytes] = {}
        try:
            with self._lock:
                now, clock = time.time(), time.monotonic()  # arrival: seconds since the epoch, UTC
                for _client, message, topic, streams, queued_at, _epoch in batch:
                    if not streams:
                        continue
                    payload = message.payload if type(message.payload) is bytes else bytes(message.payload)
                    if message.qos > 0:
                        digest = hashlib.blake2b(topic.encode() + b"\x00" + payload, digest_size=16).digest()
                        if message.dup and (packets.get(message.mid) == digest or self._db.execute(
                                "SELECT 1 FROM packets WHERE mid = ? AND digest = ?",
                                (message.mid, digest)).fetchone()):
                            # sent again because our PUBACK was lost (a stop, a crash): buffered before
                            self._log.debug("message %d on %r is a duplicate; buffered before", message.mid, topic)
                            continue
                        packets[message.mid] = digest
                    rows += [(key, topic, payload, now - (clock - queued_at)) for key in streams]
                with self._db.transaction():
                    _insert(self._db, "INSERT INTO messages (stream, topic, payload, received) VALUES ", rows)
                    _insert(self._db, "INSERT OR REPLACE INTO packets VALUES ", list(packets.items()))
        except sqlite3.Error as exc:
            # no PUBACK for what is not on disk: cut the connection, the broker sends it all again
            self._buffer_error = f"writing the buffer failed ({exc}); reconnecting to receive it again"
            client, self._failed_epoch = batch[-1][0], batch[-1][5]
            self._log.error("%s: %d messages from %d on %r: %s", self.where, len(batch), batch[0][1].mid, batch[0][2],
                            self._buffer_error)
            with contextlib.suppress(OSError, AttributeError):
                client.socket().shutdown(socket.SHUT_RDWR)
            return
        self._buffer_error = None
        for client, message, _topic, _streams, _received, epoch in batch:
            if message.qos > 0 and epoch == self._epoch:  # else the broker sends it again, DUP set
                client.ack(message.mid, message.qos)

    # ------------------------------------------------------------------ the readers' side

    @property
    def state_topic(self) -> str:
        """The Primary Host Application's STATE topic, ``spBv1.0/STATE/<sparkplug_host_id>``."""
        return f"{SPARKPLUG_NAMESPACE}/STATE/{self.receiver.sparkplug_host_id}"

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Publish ``payload`` on ``topic`` (not retained) when connected; paho queues it
        otherwise. Used for Sparkplug B Rebirth NCMDs (QoS 0, section 6.4.20)."""
        self._client.publish(topic, payload, qos=qos)

    def take(self, stream: str, after: int, limit: int) -> list[Message]:
        """The next ``limit`` messages of ``stream`` after message ``after``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, received FROM messages WHERE stream = ? AND id > ? "
                "ORDER BY id LIMIT ?", (stream, after, limit)).fetchall()
        return [Message(*row) for row in rows]

    def forget(self, stream: str, up_to: int, reader: tuple[int, bytes] | None = None) -> None:
        """Delete ``stream``'s messages up to message ``up_to`` (delivered). ``reader``, its
        reader's state after message ``last_id`` (its encoded snapshot), is kept with it in
        the same commit: a reader whose stream snapshot is older than what was deleted
        starts from it (:meth:`reader_state`)."""
        with self._lock, self._db.transaction():
            self._db.execute("DELETE FROM messages WHERE stream = ? AND id <= ?", (stream, up_to))
            if reader is not None:
                self._db.execute("INSERT OR REPLACE INTO readers VALUES (?, ?, ?)", (stream, *reader))

    def reader_state(self, stream: str) -> tuple[int, bytes] | None:
        """The last ``reader`` :meth:`forget` kept for ``stream``: ``(last_id, state)``."""
        with self._lock:
            row = self._db.execute("SELECT last_id, state FROM readers WHERE stream = ?", (stream,)).fetchone()
        return (row[0], bytes(row[1])) if row else None

    def release(self) -> None:
        """One reader fewer; the last one disconnects (the broker keeps the session)."""
        with _SHARED_LOCK:
            self.users -= 1
            if self.users > 0:
                return
            self.closed = True
        if not self._started:
            return
        with self._queued:  # the committer writes and acknowledges what came, then ends
            self._stopping = True
            self._queued.notify()
        if self._committer is not None:
            self._committer.join()
        if self._client is not None:
            if self.receiver.sparkplug_host_id is not None and self._connected:  # offline, then go
                with contextlib.suppress(RuntimeError, ValueError):  # the connection went meanwhile
                    self._client.publish(self.state_topic, state_payload(False, self._state_at), qos=1,
                                         retain=True).wait_for_publish(5)
            self._client.disconnect()  # after the PUBACKs paho still holds: wait until it is out
            self._gone.wait(5)
            self._client.loop_stop()
        if self._db is not None:
            with self._lock:
                self._db.close()
        self._log.info("disconnected from %s", self.where)
