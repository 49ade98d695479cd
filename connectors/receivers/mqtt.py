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
- ``sparkplug_b``: Sparkplug B 3.0 (Eclipse Tahu's protobuf), read as a host application
  (:mod:`connectors._sparkplug_host`): births give each metric's alias and datatype (kept
  in the stream's state, so an alias resolves after a restart too); NBIRTH, DBIRTH, NDATA
  and DDATA give one record per metric timestamp: ``timestamp`` (the metric's, else the
  payload's, UTC), ``group_id``, ``edge_node_id``, ``device_id`` (null for the node's own
  metrics), ``message_type`` and each metric's value under its name, typed by its
  datatype (DataSets, Templates and properties flattened: ``docs/sparkplug.md``). Data no
  birth explains is held and a Rebirth NCMD published (``sparkplug_rebirth``,
  ``sparkplug_rebirth_interval``, ``sparkplug_hold_messages``); a ``seq`` gap, an NDEATH
  or a DDEATH marks the stream (warning); ``sparkplug_reorder_timeout`` waits for
  out-of-sequence messages; ``sparkplug_host_id`` makes the session the Primary Host
  Application (a retained STATE and its Will). NCMD, DCMD and STATE messages are not
  records.

**Delivery.** The subscriptions are QoS 1 on a persistent session (3.1.1
``clean_session`` false; 5 ``clean_start`` false with ``session_expiry_interval``) under
a fixed ``client_id``, so the broker queues what is published while factoryflow is down
and sends it when it is back. Each message is written to the receiver's buffer, an
SQLite file under its data directory (``synchronous=FULL``), and its PUBACK is sent only
after that commit (paho 2's manual acknowledgement): a message the broker has an
acknowledgement for is on disk. A burst shares one commit (group commits, see
:mod:`connectors._mqtt_session`). A stream's ``read`` takes its buffered messages in order
of arrival (``chunk_size`` at most per batch), its state is the last message taken, and
a message is deleted from the buffer once every transmit the stream reaches has
acknowledged its batch (or a snapshot holds it at the next start). With it goes the
Sparkplug B decoder's state after that batch (births, ``seq`` counts), in the same
commit: a crash between a delivery and the next snapshot goes on from there, not from
an older snapshot that lacks the births of what is gone (a restream starts without it,
and asks for births). A message that
cannot be decoded marks the stream (category ``input``, naming the topic and the
message) and is skipped; the others go on. While the broker cannot be reached, a stream
with nothing buffered carries an error marker (category ``mqtt``); paho reconnects with
backoff (1 s doubling up to 30 s).

**Threads.** The receiver's paho client runs its own network thread (``loop_start``)
for the streams of one process: MQTT needs answers between polls (PINGREQ for the
keep-alive, the PUBACKs), so the connection cannot live only inside
``next_batch`` the way bytewax's async bridge would run it. The streams' ``read`` only
takes what the buffer holds. The session and its buffer are in
:mod:`connectors._mqtt_session`, the Sparkplug B decoding in :mod:`connectors._sparkplug`.

What is not guaranteed: messages published at QoS 0, messages beyond the broker's queue
for an offline client (Mosquitto's ``max_queued_messages``, 1000 by default), and the
queue of a broker that restarts without persistence. A session that expired (MQTT 5)
or was lost starts over: the broker sends what is retained on the subscribed topics
again. One process holds a receiver's session: run it with any number of workers
(``-w``), not several processes.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

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
)
from connectors._mqtt_session import BufferedSession, Message, SessionSlot
from connectors._sparkplug import SPARKPLUG_NAMESPACE, BadMessage
from connectors._sparkplug_host import HostSettings, SparkplugHost, rebirth_request
from dataflows.sdk import (
    Backoff,
    Batch,
    JsonPath,
    PollInterval,
    Position,
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
    receivers,
    warning,
)

PAYLOAD_FORMATS = ("json", "value", "sparkplug_b")
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
class MqttReceiver(ReceiverConfig[MqttStream, SessionSlot], tag="mqtt", kw_only=True):
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
    sparkplug_rebirth: Annotated[bool, describe(
        "sparkplug_b: ask an edge node for a rebirth (an NCMD of 'Node Control/Rebirth' = true) on "
        "data no birth explains, and on a seq gap.")] = True
    sparkplug_rebirth_interval: Annotated[float, describe(
        "sparkplug_b: seconds between two rebirth requests to one edge node.", gt=0)] = 5.0
    sparkplug_hold_messages: Annotated[int, describe(
        "sparkplug_b: messages held per edge node while its births are awaited (beyond: the "
        "oldest is dropped, with a warning).", ge=1)] = 10_000
    sparkplug_reorder_timeout: Annotated[float, describe(
        "sparkplug_b: seconds a message ahead of its seq waits for the ones before it (Sparkplug's "
        "Reorder Timeout); 0: none.", ge=0)] = 0.0
    sparkplug_host_id: Annotated[str | None, describe(
        "sparkplug_b: be the Primary Host Application with this id: a retained STATE message on "
        "spBv1.0/STATE/<id>, online while connected, offline as the session's Will.")] = None
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

    def open_worker(self, ctx: RunContext) -> SessionSlot:
        return SessionSlot(self, ctx)

    def open_stream(self, stream: MqttStream, resume_state: Any, ctx: RunContext,
                    worker: SessionSlot) -> _MqttReader:
        return _MqttReader(self, stream, worker.acquire(), ctx, resume_state)


# --------------------------------------------------------------------------- payloads


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def json_records(message: Message, record_path: list[str]) -> list[dict[str, Any]]:
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


def value_record(message: Message) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- the reader


class _MqttReader(StreamReader):
    """Takes one stream's buffered messages and decodes them into batches."""

    retryable = (MqttConnectionError,)
    marker_category = "mqtt"
    failure_text = "Receiving failed"
    retry_policy = Backoff(initial=1.0, maximum=5.0, jitter=0.5)

    def __init__(self, receiver: MqttReceiver, stream: MqttStream, session: BufferedSession,
                 ctx: RunContext, resume_state: Any) -> None:
        self._receiver = receiver
        self._stream = stream
        self._key = str(stream.key)
        self._session = session
        self._ctx = ctx
        self._format = receiver.format_of(stream)
        self._record_path = stream.record_path if stream.record_path is not None else receiver.record_path
        self._source = f"mqtt://{session.where}/{receiver.topic_filter(stream)}"
        self._restore(resume_state if isinstance(resume_state, dict) else {})
        self._resumed_from = self._last_id
        self._snapshot_given = isinstance(resume_state, dict)  # None: the first run, or a restream
        self._acks = ctx.acknowledgements(receiver.data_receiver_name, stream.key)
        # ack_key -> the last message id of its batch and, for Sparkplug B, the snapshot after it
        self._pending: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self._log = logging.getLogger(f"receiver.{receiver.data_receiver_name}")
        self._started = False

    def _restore(self, state: dict[str, Any]) -> None:
        """Take up the reader's :meth:`snapshot` ``state`` (``{}``: the start)."""
        receiver = self._receiver
        self._last_id: int = state.get("last_id", 0)
        self._buffer: str | None = state.get("buffer")  # the generation of the buffer last_id counts in
        self._sparkplug = SparkplugHost.from_state(state.get("sparkplug"), HostSettings(
            receiver.sparkplug_rebirth, receiver.sparkplug_rebirth_interval, receiver.sparkplug_hold_messages,
            receiver.sparkplug_reorder_timeout), self._request_rebirth)
        self._late = state.get("late", 0)  # records released after message last_id by the reorder wait

    def read(self) -> tuple[list[Batch], bool]:
        if not self._started:
            self._session.start()
            if self._buffer not in (None, self._session.generation):
                self._log.warning("%s: the buffer was made anew since the state was saved (after message "
                                  "%d of the old one): reading all of the new one", self._key, self._last_id)
                self._last_id = 0
            else:
                self._session.forget(self._key, self._resumed_from)  # in the snapshot: delivered
                self._catch_up()
            self._buffer = self._session.generation
            self._started = True
        self._forget_delivered()
        messages = self._session.take(self._key, self._last_id, self._receiver.chunk_size)
        records: list[dict[str, Any]] = []
        ordinals: tuple[list[int], list[int]] = ([], [])  # each record's message id and place in it
        if self._format == "sparkplug_b" and self._receiver.sparkplug_reorder_timeout > 0:
            released = self._sparkplug.due(datetime.now(UTC).timestamp(), self.report_warning)
            records += released  # after the last message's records: numbered on from a million
            ordinals[0].extend([self._last_id] * len(released))
            ordinals[1].extend(range(1_000_000 + self._late, 1_000_000 + self._late + len(released)))
            self._late += len(released)
        if not messages and not records:
            if problem := self._session.outage():
                raise MqttConnectionError(problem)
            return [], False
        for message in messages:
            try:
                decoded = self._decode(message)
                records += decoded
                ordinals[0].extend([message.id] * len(decoded))
                ordinals[1].extend(range(len(decoded)))
            except BadMessage as exc:
                self.report_bad_input(f"message {message.id} on {message.topic!r} (arrived "
                                      f"{_utc(message.received).isoformat()}): {exc}; skipped")
        if messages:
            self._last_id, self._late = messages[-1].id, 0
        frame = self._frame(records)
        ack_key = f"mqtt|{self._buffer}|{self._last_id}|{self._late}"
        self._pending[ack_key] = (self._last_id, self.snapshot() if self._format == "sparkplug_b" else None)
        position = Position("", pl.DataFrame({"message": ordinals[0], "record": ordinals[1]},
                                              schema={"message": pl.Int64, "record": pl.Int64}),
                            identity=self._buffer or "") if frame.height == len(records) else None
        batch = Batch(self._receiver.data_receiver_name, self._stream.key, frame, self._source, ack_key,
                      position=position)
        return [batch], len(messages) == self._receiver.chunk_size

    def _decode(self, message: Message) -> list[dict[str, Any]]:
        if self._format == "json":
            return json_records(message, self._record_path)
        if self._format == "value":
            return [value_record(message)]
        records = self._sparkplug.read(message.topic, message.payload, message.received, self.report_warning,
                                       message.id)
        levels = message.topic.split("/")
        if len(levels) > 3 and levels[2] in ("NBIRTH", "DBIRTH"):
            born = "/".join(levels[1:2] + levels[3:])
            bdseq = self._sparkplug.sparkplug.bdseq.get(f"{levels[1]}/{levels[3]}")
            self._log.info("%s: %s %s online (%s%s)", self._key, "edge node" if levels[2] == "NBIRTH" else "device",
                           born, levels[2], f", bdSeq {bdseq}" if levels[2] == "NBIRTH" else "")
        return records

    def _request_rebirth(self, node: str, why: str) -> None:
        """Publish a Rebirth NCMD to edge node ``node`` (``group/node``)."""
        group, edge_node = node.split("/", 1)
        self._session.publish(f"{SPARKPLUG_NAMESPACE}/{group}/NCMD/{edge_node}", rebirth_request())
        self._log.info("%s: asked edge node %s for a rebirth (%s)", self._key, node, why)

    def _frame(self, records: list[dict[str, Any]]) -> pl.DataFrame:
        """One row per record; a field whose values differ in type across the batch becomes
        their common type (text, when nothing narrower holds them all), with a warning."""
        if not records:
            return pl.DataFrame()
        try:
            frame = pl.from_dicts(records, infer_schema_length=None)
        except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
            pass
        else:
            if self._format == "sparkplug_b":  # each metric's column in its Sparkplug datatype
                schema = self._sparkplug.sparkplug.schema(frame.columns)
                try:
                    return frame.cast(schema)  # type: ignore[arg-type]
                except (pl.exceptions.PolarsError, TypeError, ValueError):
                    return frame
            return frame
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
        done = self._acks.delivered_prefix(list(self._pending))  # oldest first: no gap left behind
        if done:
            up_to, state = self._pending[done[-1]]
            kept = self._sparkplug.oldest_kept() if self._format == "sparkplug_b" else None
            if kept is not None:  # held Sparkplug messages stay until a snapshot holds them
                up_to = min(up_to, kept - 1)
            # the decoder's births and seq counts go with the messages they came from
            reader = (state["last_id"], msgspec.msgpack.encode(state)) if state is not None else None
            self._session.forget(self._key, up_to, reader)
            for key in done:
                self._acks.forget(key)
                del self._pending[key]

    def _catch_up(self) -> None:
        """Take up the state kept with the last messages deleted as delivered when it is
        newer than the stream's snapshot (a crash between a delivery and the next
        snapshot): the Sparkplug births and ``seq`` counts of what is gone from the
        buffer are in it, not in the older snapshot. Without a snapshot (a restream, which
        forgets the births on purpose, or a crash before the first) the births are asked for."""
        if self._format != "sparkplug_b" or not self._snapshot_given:
            return
        kept = self._session.reader_state(self._key)
        if kept is None or kept[0] <= self._last_id:
            return
        try:
            state = msgspec.msgpack.decode(kept[1])
        except msgspec.DecodeError as exc:
            self._log.warning("%s: the reader state kept in the buffer with message %d cannot be read (%s); "
                              "going on from the snapshot", self._key, kept[0], exc)
            return
        if state.get("buffer") != self._session.generation:
            return
        self._log.info("%s: messages up to %d were delivered after the last snapshot (after message %d): "
                       "going on after message %d", self._key, kept[0], self._last_id, kept[0])
        self._restore(state)

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"buffer": self._buffer, "last_id": self._last_id}
        if self._format == "sparkplug_b":
            state["sparkplug"] = self._sparkplug.state()
            state["late"] = self._late
        return state

    def describe(self) -> str:
        return f"after message {self._last_id}"

    def close(self) -> None:
        self._acks.close()
        self._session.release()

