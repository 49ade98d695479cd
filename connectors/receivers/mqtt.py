"""The ``mqtt`` receiver: messages of an MQTT broker (paho-mqtt), JSON, plain values or Sparkplug B.

FactoryTX documents an MQTT data receiver (``shared/specs/factorytx-digest.md``) without
its keys; this one names them with MQTT's and Sparkplug's terms. ``docs/mqtt.md`` is the
user's guide.

**Keys.** The connection keys are the ``mqtt`` transmit's (:mod:`connectors._mqtt`):
``host``, ``port``, ``client_id`` (``factoryflow-<data_receiver_name>`` by default),
``username`` / ``password``, ``keepalive``, ``protocol_version`` ``"3.1.1"`` or ``"5"``,
``tls``, ``ca_file``, ``cert_file``, ``key_file``. ``qos`` (1) is the subscriptions'
quality of service. Each stream subscribes to a ``topic`` filter (``+`` and ``#``
wildcards); a stream without one takes the receiver's ``topic`` template with its
``{asset}`` and ``{stream_type}`` filled in, so ``plant1/{asset}/{stream_type}/#`` maps
topic levels to streams. ``payload_format`` (on the receiver, or a stream) is one of:

- ``json``: an object, or an array of objects, per message (``record_path``: the keys
  leading to them in a nested document); one record per object, plus ``topic`` and
  ``timestamp`` (the time the message arrived, UTC) when the object has none;
- ``value``: a plain value (a JSON number or boolean, else the UTF-8 text); one record
  per message: ``timestamp`` (arrival, UTC) and the value under the topic's name;
- ``sparkplug_b``: the Eclipse Tahu protobuf (Sparkplug B 3.0, read with pysparkplug).
  NBIRTH and DBIRTH give each metric's alias and datatype (kept in the stream's state,
  so an alias resolves after a restart too); NBIRTH, DBIRTH, NDATA and DDATA give one
  record per metric timestamp: ``timestamp`` (the metric's, else the payload's, UTC),
  ``group_id``, ``edge_node_id``, ``device_id`` (null for the node's own metrics),
  ``message_type`` and each metric's value under its name (``bdSeq`` left out). A
  ``seq`` that skips numbers, an NDEATH or a DDEATH marks the stream (warning);
  NCMD, DCMD and STATE messages are not records.

**Delivery.** The subscriptions are QoS 1 on a persistent session (3.1.1
``clean_session`` false; 5 ``clean_start`` false with ``session_expiry_interval``) under
a fixed ``client_id``, so the broker queues what is published while factoryflow is down
and sends it when it is back. Each message is written to the receiver's buffer, an
SQLite file under its data directory (``synchronous=FULL``), before the callback
returns, and paho sends the PUBACK only after that: a message the broker has an
acknowledgement for is on disk. A stream's ``read`` takes its buffered messages in order
of arrival (``chunk_size`` at most per batch), its state is the last message taken, and
a message is deleted from the buffer once every transmit the stream reaches has
acknowledged its batch (or a snapshot holds it at the next start). A message that
cannot be decoded marks the stream (category ``input``, naming the topic and the
message) and is skipped; the others go on. While the broker cannot be reached, a stream
with nothing buffered carries an error marker (category ``mqtt``); paho reconnects with
backoff (1 s doubling up to 30 s).

**Threads.** The receiver's paho client runs its own network thread (``loop_start``)
for the streams of one process: MQTT needs answers between polls (PINGREQ for the
keep-alive, a PUBACK per message), so the connection cannot live only inside
``next_batch`` the way bytewax's async bridge would run it. The streams' ``read`` only
takes what the buffer holds.

What is not guaranteed: messages published at QoS 0, messages beyond the broker's queue
for an offline client (Mosquitto's ``max_queued_messages``, 1000 by default), and the
queue of a broker that restarts without persistence. A session that expired (MQTT 5)
or was lost starts over: the broker sends what is retained on the subscribed topics
again. One process holds a receiver's session: run it with any number of workers
(``-w``), not several processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
import polars as pl

from connectors._mqtt import (
    BrokerPort,
    CaFile,
    CertFile,
    ClientId,
    Host,
    Keepalive,
    KeyFile,
    Password,
    ProtocolVersion,
    Tls,
    Username,
    connection_violations,
    filter_problem,
    new_client,
    topic_matches,
)
from dataflows.backoff import Backoff
from dataflows.ledger import Ledger, ledger_path, open_durable
from dataflows.records import Batch
from dataflows.registry import receivers
from dataflows.sdk import (
    JsonPath,
    PollInterval,
    ReceiverConfig,
    RunContext,
    StreamConfig,
    StreamReader,
    Template,
    Violation,
    choice_violations,
    describe,
    error,
    is_placeholder,
    warning,
)

if TYPE_CHECKING:
    from pysparkplug import Metric

PAYLOAD_FORMATS = ("json", "value", "sparkplug_b")
#: The Sparkplug B topic namespace (Sparkplug 3.0, section 4.1).
SPARKPLUG_NAMESPACE = "spBv1.0"
_BUFFER_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS messages_stream ON messages (stream, id);
CREATE TABLE IF NOT EXISTS subscriptions (topic_filter TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS packets (mid INTEGER PRIMARY KEY, digest BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class MqttConnectionError(ConnectionError):
    """The broker cannot be reached or refused the session (retried; marks the stream)."""


# --------------------------------------------------------------------------- config


class MqttStream(StreamConfig, kw_only=True):
    """A topic filter read as one stream."""

    topic: Annotated[str | None, describe(
        "Topic filter ('+' and '#' wildcards); default: the receiver's topic template with this "
        "stream's asset and stream_type.")] = None
    payload_format: Annotated[str | None, describe(
        "How messages are decoded; default: the receiver's.", choices=PAYLOAD_FORMATS)] = None
    record_path: Annotated[list[str] | None, describe(
        "json: keys leading to the object or array of objects; default: the receiver's.")] = None


@receivers.register
class MqttReceiver(ReceiverConfig, tag="mqtt", kw_only=True):
    """Subscribes to topics of an MQTT broker (QoS 1, persistent session)."""

    title: ClassVar[str] = "MQTT"
    template: ClassVar[Template] = Template(
        "MQTT", "A template for collecting messages from an MQTT broker", {
            "data_receiver_name": "mqtt_1", "protocol": "mqtt", "poll_interval": 1,
            "host": "<Please input the hostname or IP address of the broker>", "port": 1883,
            "topic": "plant1/{asset}/{stream_type}/#", "payload_format": "json",
            "streams": [{"asset": "asset_1", "stream_type": "cycle"},
                        {"asset": "asset_2", "stream_type": "sensors",
                         "topic": "spBv1.0/plant1/+/asset_2/#", "payload_format": "sparkplug_b"}]})
    example: ClassVar[dict[str, Any]] = {
        "data_receiver_name": "line1_mqtt", "protocol": "mqtt", "poll_interval": 1,
        "host": "broker.plant.local", "port": 8883, "tls": True,
        "username": "factoryflow", "password": "${MQTT_PASSWORD}",
        "topic": "line1/{asset}/{stream_type}/#", "payload_format": "json",
        "streams": [{"asset": "press_1", "stream_type": "cycle"},
                    {"asset": "oven_2", "stream_type": "sensors",
                     "topic": "spBv1.0/line1/+/oven_2/#", "payload_format": "sparkplug_b"}]}

    poll_interval: PollInterval = 1.0
    host: Host
    port: BrokerPort = 1883
    client_id: ClientId = None
    username: Username = None
    password: Password = None
    keepalive: Keepalive = 60
    protocol_version: ProtocolVersion = "3.1.1"
    tls: Tls = False
    ca_file: CaFile = None
    cert_file: CertFile = None
    key_file: KeyFile = None
    qos: Annotated[Literal[0, 1, 2], describe(
        "Quality of service of the subscriptions (0 loses what arrives while factoryflow is "
        "down).")] = 1
    session_expiry_interval: Annotated[int, describe(
        "MQTT 5: seconds the broker keeps the session, and queues messages, after a disconnect.",
        ge=1)] = 7 * 24 * 3600
    topic: Annotated[str | None, describe(
        "Topic filter template over {asset} and {stream_type}, for the streams without a topic "
        "(e.g. 'plant1/{asset}/{stream_type}/#').")] = None
    payload_format: Annotated[str, describe(
        "How messages are decoded: 'json' (objects), 'value' (a plain value named by its topic) "
        "or 'sparkplug_b'.", choices=PAYLOAD_FORMATS)] = "json"
    record_path: Annotated[list[str], describe(
        "json: keys leading to the object or array of objects in a nested message; [] for the "
        "message itself.")] = msgspec.field(default_factory=list)
    chunk_size: Annotated[int, describe("Messages per batch, at most.", ge=1)] = 10_000
    streams: Annotated[list[MqttStream], describe("Streams.", min_length=1)]

    def topic_filter(self, stream: MqttStream) -> str:
        """The topic filter ``stream`` subscribes to."""
        if stream.topic is not None:
            return stream.topic
        assert self.topic is not None  # violations() checks it
        return self.topic.format(asset=stream.asset, stream_type=stream.stream_type)

    def format_of(self, stream: MqttStream) -> str:
        """The stream's ``payload_format``."""
        return stream.payload_format or self.payload_format

    def violations(self, path: JsonPath) -> list[Violation]:
        out = connection_violations(self, path)
        out += choice_violations(self.payload_format, PAYLOAD_FORMATS, "payload_format",
                                 [*path, "payload_format"])
        if self.topic is not None and not is_placeholder(self.topic):
            try:
                self.topic.format(asset="a", stream_type="s")
            except (KeyError, IndexError, ValueError) as exc:
                out.append(error(f"topic template {self.topic!r} does not format: only {{asset}} "
                                 f"and {{stream_type}} may be used ({exc!r})", [*path, "topic"]))
                return out
        seen: dict[str, int] = {}
        for index, stream in enumerate(self.streams):
            s_path = [*path, "streams", index]
            out += choice_violations(stream.payload_format, PAYLOAD_FORMATS, "payload_format",
                                     [*s_path, "payload_format"])
            if stream.topic is None and self.topic is None:
                out.append(error("no topic: give the stream a topic filter, or the receiver a "
                                 "topic template", s_path))
                continue
            topic_filter = self.topic_filter(stream)
            if is_placeholder(topic_filter):
                continue
            where = [*s_path, "topic"] if stream.topic is not None else [*path, "topic"]
            if problem := filter_problem(topic_filter):
                out.append(error(f"topic filter {topic_filter!r}: {problem}", where))
            if self.format_of(stream) == "sparkplug_b" and \
                    topic_filter.split("/")[0] not in (SPARKPLUG_NAMESPACE, "+", "#"):
                out.append(warning(f"topic filter {topic_filter!r} is outside Sparkplug B's "
                                   f"{SPARKPLUG_NAMESPACE}/ namespace", where))
            if self.format_of(stream) != "json" and stream.record_path:
                out.append(warning("record_path applies to payload_format json only",
                                   [*s_path, "record_path"]))
            if topic_filter in seen:
                out.append(warning(f"topic filter {topic_filter!r} is also stream {seen[topic_filter]}'s: "
                                   "both streams get every message", where))
            seen.setdefault(topic_filter, index)
        if self.qos == 0:
            out.append(warning("qos 0: messages published while factoryflow is down are lost",
                               [*path, "qos"]))
        return out

    def open_stream(self, stream: StreamConfig, resume_state: Any, ctx: RunContext,
                    shared: dict[str, Any]) -> _MqttReader:
        assert isinstance(stream, MqttStream)
        with _SHARED_LOCK:
            session = shared.get("mqtt")
            if session is None or session.closed:
                session = shared["mqtt"] = _Session(self, ctx)
            session.users += 1
        return _MqttReader(self, stream, session, ctx, resume_state)


_SHARED_LOCK = threading.Lock()  # the partitions of several workers open streams at once


# --------------------------------------------------------------------------- the session


@dataclass(frozen=True)
class _Message:
    id: int
    topic: str
    payload: bytes
    received: float  # seconds since the epoch, UTC


class _Session:
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
        self._db: Any = None
        self._client: Any = None
        self._started = False
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
            path = self._ctx.component_dir(self.receiver.data_receiver_name) / "messages.sqlite"
            self._db = open_durable(path, _BUFFER_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', ?)", (uuid.uuid4().hex,))
            (self.generation,) = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            receiver = self.receiver
            client_id = receiver.client_id or f"factoryflow-{receiver.data_receiver_name}"
            client, connect = new_client(receiver, client_id,
                                         session_expiry=receiver.session_expiry_interval)
            client.on_connect = self._on_connect
            client.on_connect_fail = self._on_connect_fail
            client.on_disconnect = self._on_disconnect
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message
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

    def _on_connect(self, client: Any, _userdata: Any, flags: dict[str, Any], rc: Any,
                    _properties: Any = None) -> None:
        import paho.mqtt.client as mqtt

        if rc != 0:
            reason = mqtt.connack_string(rc) if isinstance(rc, int) else str(rc)
            self._problem = f"{self.where}: the broker refused the connection: {reason}"
            self._log.error("%s", self._problem)
            return
        wanted = set(self._filters.values())
        present = bool(flags.get("session present"))
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
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM subscriptions")
            self._db.executemany("INSERT INTO subscriptions VALUES (?)", [(f,) for f in wanted])
            self._db.execute("COMMIT")
        self._connected, self._problem = True, None
        self._gone.clear()
        self._log.info("connected to %s (%s session); subscribed to %s", self.where,
                       "kept" if present else "new", ", ".join(subscribe) or "nothing new")

    def _on_subscribe(self, _client: Any, _userdata: Any, mid: int, granted: Any,
                      _properties: Any = None) -> None:
        filters = self._subscribing.pop(mid, [])
        refused = [(f, g) for f, g in zip(filters, granted, strict=False)
                   if (g if isinstance(g, int) else g.value) >= 0x80]
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

    def _on_disconnect(self, _client: Any, _userdata: Any, rc: Any, _properties: Any = None) -> None:
        import paho.mqtt.client as mqtt

        was_connected, self._connected = self._connected, False
        self._gone.set()
        if was_connected and not self.closed:  # a refused connection keeps the refusal's reason
            reason = mqtt.error_string(rc) if isinstance(rc, int) else str(rc)
            self._problem = f"{self.where}: connection lost ({reason}); reconnecting"
            self._log.warning("%s", self._problem)

    def _on_message(self, client: Any, _userdata: Any, message: Any) -> None:
        """Buffer ``message`` for every stream whose filter matches its topic; paho sends
        the PUBACK when this returns, so this commits first."""
        topic = message.topic
        streams = [key for key, topic_filter in self._filters.items() if topic_matches(topic_filter, topic)]
        if not streams:
            if topic not in self._unmatched and len(self._unmatched) < 1000:
                self._unmatched.add(topic)
                self._log.warning("a message on %r matches no stream's topic filter; dropped", topic)
            return
        received = datetime.now(UTC).timestamp()
        payload = bytes(message.payload)
        digest = hashlib.blake2b(topic.encode() + b"\x00" + payload, digest_size=16).digest() \
            if message.qos > 0 else None
        try:
            with self._lock:
                if digest is not None and message.dup and self._db.execute(
                        "SELECT 1 FROM packets WHERE mid = ? AND digest = ?", (message.mid, digest)).fetchone():
                    # sent again because our PUBACK was lost (a stop, a crash): it is in the buffer already
                    self._log.debug("message %d on %r is a duplicate; buffered before", message.mid, topic)
                    return
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(
                        "INSERT INTO messages (stream, topic, payload, received) VALUES (?, ?, ?, ?)",
                        [(key, topic, payload, received) for key in streams])
                    if digest is not None:
                        self._db.execute("INSERT OR REPLACE INTO packets VALUES (?, ?)", (message.mid, digest))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            # no PUBACK for what is not on disk: cut the connection, the broker sends it again
            self._buffer_error = f"writing the buffer failed ({exc}); reconnecting to receive it again"
            self._log.error("%s: message %d on %r: %s", self.where, message.mid, topic, self._buffer_error)
            with contextlib.suppress(OSError):
                client.socket().shutdown(socket.SHUT_RDWR)
            return
        self._buffer_error = None

    # ------------------------------------------------------------------ the readers' side

    def take(self, stream: str, after: int, limit: int) -> list[_Message]:
        """The next ``limit`` messages of ``stream`` after message ``after``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, received FROM messages WHERE stream = ? AND id > ? "
                "ORDER BY id LIMIT ?", (stream, after, limit)).fetchall()
        return [_Message(*row) for row in rows]

    def forget(self, stream: str, up_to: int) -> None:
        """Delete ``stream``'s messages up to message ``up_to`` (delivered)."""
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE stream = ? AND id <= ?", (stream, up_to))

    def release(self) -> None:
        """One reader fewer; the last one disconnects (the broker keeps the session)."""
        with _SHARED_LOCK:
            self.users -= 1
            if self.users > 0:
                return
            self.closed = True
        if not self._started:
            return
        if self._client is not None:
            self._client.disconnect()  # after the PUBACKs paho still holds: wait until it is out
            self._gone.wait(5)
            self._client.loop_stop()
        if self._db is not None:
            with self._lock:
                self._db.close()
        self._log.info("disconnected from %s", self.where)


# --------------------------------------------------------------------------- payloads


class BadMessage(ValueError):
    """A message that cannot be decoded; the stream is marked and the message skipped."""


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def json_records(message: _Message, record_path: list[str]) -> list[dict[str, Any]]:
    """The records of a JSON message: its object, or each object of its array (at
    ``record_path``), with ``topic`` and ``timestamp`` (arrival, UTC) added when absent.

    :raises BadMessage: not JSON, ``record_path`` missing, or something other than objects.
    """
    try:
        document = msgspec.json.decode(message.payload)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from exc
    for depth, key in enumerate(record_path):
        if not isinstance(document, dict) or key not in document:
            raise BadMessage(f"record_path {record_path[:depth + 1]} is not in the message")
        document = document[key]
    items = document if isinstance(document, list) else [document]
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadMessage(f"item {index + 1} is a JSON {type(item).__name__}, not an object")
    received = _utc(message.received)
    for item in items:
        item.setdefault("topic", message.topic)
        item.setdefault("timestamp", received)
    return items


def value_record(message: _Message) -> dict[str, Any]:
    """The record of a plain-value message: ``timestamp`` (arrival, UTC) and the value
    (a JSON number or boolean, else the text) under the topic.

    :raises BadMessage: the payload is not UTF-8 text.
    """
    try:
        text = message.payload.decode()
    except UnicodeDecodeError as exc:
        raise BadMessage(f"not UTF-8 text: {exc}") from exc
    value: Any = text
    try:
        parsed = msgspec.json.decode(message.payload)
    except msgspec.DecodeError:
        pass
    else:
        if isinstance(parsed, int | float | bool):
            value = parsed
    return {"timestamp": _utc(message.received), message.topic: value}


@dataclass
class Sparkplug:
    """Decodes Sparkplug B messages, keeping what births told (aliases, datatypes) and
    each edge node's last ``seq``.

    :ivar births: for ``group/node`` or ``group/node/device``, its metrics' ``[name,
        alias or None, datatype]`` from the last NBIRTH or DBIRTH.
    :ivar seq: for ``group/node``, the ``seq`` of its last message.
    """

    births: dict[str, list[list[Any]]] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    _decoders: dict[str, Any] = field(default_factory=dict, repr=False)

    def state(self) -> dict[str, Any]:
        """What :meth:`from_state` takes (plain, picklable)."""
        return {"births": dict(self.births), "seq": dict(self.seq)}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Sparkplug:
        state = state or {}
        return cls(births=dict(state.get("births", {})), seq=dict(state.get("seq", {})))

    def records(self, message: _Message, warn: Callable[[str], None]) -> list[dict[str, Any]]:
        """The records of one message (none for deaths, commands and STATE); ``warn``
        takes a ``seq`` gap or a death.

        :raises BadMessage: not a Sparkplug B topic or payload, an alias without a birth.
        """
        import pysparkplug as sp

        levels = message.topic.split("/")
        if levels[0] != SPARKPLUG_NAMESPACE or len(levels) < 3:
            raise BadMessage(f"not a Sparkplug B topic ({SPARKPLUG_NAMESPACE}/group/type/node[/device])")
        if levels[1] == "STATE" or levels[2] in ("NCMD", "DCMD"):
            return []  # host application state, commands to edge nodes
        if len(levels) not in (4, 5):
            raise BadMessage(f"not a Sparkplug B topic ({SPARKPLUG_NAMESPACE}/group/type/node[/device])")
        group, kind, node = levels[1], levels[2], levels[3]
        device = levels[4] if len(levels) == 5 else None
        node_key = f"{group}/{node}"
        key = f"{node_key}/{device}" if device is not None else node_key
        classes = {"NBIRTH": sp.NBirth, "DBIRTH": sp.DBirth, "NDATA": sp.NData, "DDATA": sp.DData,
                   "NDEATH": sp.NDeath, "DDEATH": sp.DDeath}
        payload_class = classes.get(kind)
        if payload_class is None or (device is None) != (kind[0] == "N"):
            raise BadMessage(f"unknown Sparkplug B message type {kind!r} for this topic")
        if kind == "NDEATH":
            self.seq.pop(node_key, None)
            warn(f"edge node {node_key} went offline (NDEATH on {message.topic!r})")
            return []
        birth = self._decoder(key) if kind in ("NDATA", "DDATA") else None
        try:
            payload = payload_class.decode(message.payload, birth=birth)
        except KeyError as exc:
            raise BadMessage(f"metric alias {exc} is not in the last {'D' if device else 'N'}BIRTH "
                             f"of {key}") from exc
        except NotImplementedError as exc:  # a metric without a datatype, or one pysparkplug lacks
            if kind in ("NDATA", "DDATA") and birth is None:
                raise BadMessage(self._no_birth(key, device)) from exc
            raise BadMessage(f"a metric's datatype is not supported: {exc}") from exc
        except Exception as exc:  # protobuf's and pysparkplug's errors vary
            raise BadMessage(f"not a Sparkplug B {kind} payload: {type(exc).__name__}: {exc}") from exc
        self._check_seq(node_key, kind, getattr(payload, "seq", None), message.topic, warn)
        if kind == "DDEATH":
            warn(f"device {key} went offline (DDEATH on {message.topic!r})")
            return []
        if kind in ("NBIRTH", "DBIRTH"):
            self.births[key] = [[m.name, m.alias, int(m.datatype)] for m in payload.metrics]
            self._decoders.pop(key, None)
        if any(m.name is None for m in payload.metrics):
            raise BadMessage(self._no_birth(key, device))
        return _metric_records(payload.timestamp, payload.metrics, {
            "group_id": group, "edge_node_id": node, "device_id": device, "message_type": kind})

    @staticmethod
    def _no_birth(key: str, device: str | None) -> str:
        return (f"metrics named by alias only, and no {'D' if device else 'N'}BIRTH of {key} seen yet "
                "(the edge node sends one when it reconnects, or on a Rebirth request)")

    def _decoder(self, key: str) -> Any:
        """An NBIRTH built from the birth of ``key``, for pysparkplug to resolve aliases with."""
        import pysparkplug as sp

        if key not in self._decoders and key in self.births:
            self._decoders[key] = sp.NBirth(timestamp=0, seq=0, metrics=tuple(
                sp.Metric(timestamp=None, name=name, datatype=sp.DataType(datatype), alias=alias)
                for name, alias, datatype in self.births[key]))
        return self._decoders.get(key)

    def _check_seq(self, node_key: str, kind: str, seq: int | None, topic: str,
                   warn: Callable[[str], None]) -> None:
        if seq is None:
            return
        last = self.seq.get(node_key)
        self.seq[node_key] = seq
        if kind == "NBIRTH" or last is None:
            return
        expected = (last + 1) % 256
        if seq != expected:
            missing = (seq - expected) % 256
            warn(f"{topic}: seq {seq} after {last}: {missing} message(s) of edge node {node_key} missing")


def _metric_records(timestamp: int, metrics: tuple[Metric, ...], fields: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per metric timestamp (milliseconds since the epoch; the payload's when a
    metric has none), oldest first, with ``fields`` and each metric's value under its name."""
    by_time: dict[int, dict[str, Any]] = {}
    for metric in metrics:
        if metric.name == "bdSeq":
            continue
        at = metric.timestamp if metric.timestamp is not None else timestamp
        record = by_time.get(at)
        if record is None:
            record = by_time[at] = {"timestamp": datetime.fromtimestamp(at / 1000, UTC), **fields}
        value = None if metric.is_null else metric.value
        record[metric.name] = list(value) if isinstance(value, tuple) else value
    return [by_time[at] for at in sorted(by_time)]


# --------------------------------------------------------------------------- the reader


class _MqttReader(StreamReader):
    """Takes one stream's buffered messages and decodes them into batches."""

    retryable = (MqttConnectionError,)
    marker_category = "mqtt"
    failure_text = "Receiving failed"
    retry_policy = Backoff(initial=1.0, maximum=5.0, jitter=0.5)

    def __init__(self, receiver: MqttReceiver, stream: MqttStream, session: _Session,
                 ctx: RunContext, resume_state: Any) -> None:
        state = resume_state if isinstance(resume_state, dict) else {}
        self._receiver = receiver
        self._stream = stream
        self._key = str(stream.key)
        self._session = session
        self._ctx = ctx
        self._format = receiver.format_of(stream)
        self._record_path = stream.record_path if stream.record_path is not None else receiver.record_path
        self._source = f"mqtt://{session.where}/{receiver.topic_filter(stream)}"
        self._last_id: int = state.get("last_id", 0)
        self._buffer: str | None = state.get("buffer")  # the generation of the buffer last_id counts in
        self._resumed_from = self._last_id
        self._sparkplug = Sparkplug.from_state(state.get("sparkplug"))
        self._expected = ctx.expected_transmits.get((receiver.data_receiver_name, stream.key), frozenset())
        self._pending: dict[str, int] = {}  # ack_key -> last message id of its batch
        self._log = logging.getLogger(f"receiver.{receiver.data_receiver_name}")
        self._ledger: Ledger | None = None
        self._started = False

    def read(self) -> tuple[list[Batch], bool]:
        if not self._started:
            self._session.start()
            if self._buffer not in (None, self._session.generation):
                self._log.warning("%s: the buffer was made anew since the state was saved (after message "
                                  "%d of the old one): reading all of the new one", self._key, self._last_id)
                self._last_id = 0
            else:
                self._session.forget(self._key, self._resumed_from)  # in the snapshot: delivered
            self._buffer = self._session.generation
            self._started = True
        self._forget_delivered()
        messages = self._session.take(self._key, self._last_id, self._receiver.chunk_size)
        if not messages:
            if problem := self._session.outage():
                raise MqttConnectionError(problem)
            return [], False
        records: list[dict[str, Any]] = []
        for message in messages:
            try:
                records += self._decode(message)
            except BadMessage as exc:
                self.report_bad_input(f"message {message.id} on {message.topic!r} (arrived "
                                      f"{_utc(message.received).isoformat()}): {exc}; skipped")
        self._last_id = messages[-1].id
        frame = self._frame(records)
        ack_key = f"mqtt|{self._buffer}|{self._last_id}"
        self._pending[ack_key] = self._last_id
        batch = Batch(self._receiver.data_receiver_name, self._stream.key, frame, self._source, ack_key)
        return [batch], len(messages) == self._receiver.chunk_size

    def _decode(self, message: _Message) -> list[dict[str, Any]]:
        if self._format == "json":
            return json_records(message, self._record_path)
        if self._format == "value":
            return [value_record(message)]
        return self._sparkplug.records(message, self.report_warning)

    def _frame(self, records: list[dict[str, Any]]) -> pl.DataFrame:
        """One row per record; a field whose values differ in type across the batch becomes
        their common type (text, when nothing narrower holds them all), with a warning."""
        if not records:
            return pl.DataFrame()
        try:
            return pl.from_dicts(records, infer_schema_length=None)
        except (pl.exceptions.PolarsError, TypeError, ValueError):
            pass
        frames = [pl.from_dicts([record]) for record in records]
        try:
            frame = pl.concat(frames, how="diagonal_relaxed")
        except (pl.exceptions.PolarsError, TypeError, ValueError):
            frame = pl.concat([f.select(pl.all().cast(pl.String) if f.width else pl.all()) for f in frames],
                              how="diagonal_relaxed")
        mixed = [name for name in frame.columns
                 if len({f.schema[name] for f in frames if name in f.columns and f[name].dtype != pl.Null}) > 1]
        self.report_warning(f"messages up to {self._last_id}: fields {mixed} hold values of differing "
                            f"types; they became {', '.join(str(frame.schema[n]) for n in mixed)}")
        return frame

    def _forget_delivered(self) -> None:
        """Delete the messages of batches every transmit acknowledged."""
        if not self._pending:
            return
        if self._ledger is None:
            self._ledger = Ledger(ledger_path(self._ctx.home))
        name = self._receiver.data_receiver_name
        done: list[str] = []
        for key in self._pending:  # oldest first: only what every earlier batch also has
            if not self._expected <= self._ledger.acked_by(name, self._key, key):
                break
            done.append(key)
        if done:
            self._session.forget(self._key, self._pending[done[-1]])
            for key in done:
                self._ledger.forget(name, self._key, key)
                del self._pending[key]

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"buffer": self._buffer, "last_id": self._last_id}
        if self._format == "sparkplug_b":
            state["sparkplug"] = self._sparkplug.state()
        return state

    def describe(self) -> str:
        return f"after message {self._last_id}"

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
        self._session.release()

