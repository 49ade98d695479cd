"""The ``sparkplug_b`` transmit: factoryflow as a Sparkplug B edge node, publishing records
into a Unified Namespace (paho-mqtt; payloads built with Tahu's protobuf messages).

Keys: the ``mqtt`` transmit's connection keys (``host``, ``port``, ``client_id``,
``username``/``password``, ``keepalive``, ``protocol_version``, ``tls``, ``ca_file``,
``cert_file``/``key_file``), and Sparkplug's names: ``group_id``, ``edge_node_id`` (the
transmit's name by default), ``device_id`` (a template over ``{asset}`` and
``{stream_type}``, ``{asset}`` by default: each asset a device), ``metric_name`` (a template
over ``{column}`` and ``{stream_type}``, ``{column}`` by default), ``primary_host_id``
(publish only while that Primary Host Application's STATE says online),
``records_per_message`` (DDATA size), ``qos``, ``publish_timeout``.

What goes on the wire (Sparkplug B 3.0; ``docs/mqtt.md`` shows it):

- on every MQTT session: the Will is an NDEATH with ``bdSeq`` (0–255, one more per new
  session, kept in the transmit's data directory across restarts); then an NBIRTH (``seq``
  0, the same ``bdSeq``, ``Node Control/Rebirth`` false) and a DBIRTH per device known,
  naming each metric with its alias and datatype and its last value (null when none yet);
- a device's first records, and a column not seen before or whose type changed, give a
  DBIRTH of that device first (aliases are kept across restarts, unique in the edge node);
- each batch is DDATA by alias only (``records_per_message`` records per message), every
  record's values with the record's ``timestamp`` (UTC, ms) as their metric timestamp;
  nulls as ``is_null``; ``seq`` counts every message of the session, 0–255 wrapping;
- a Rebirth NCMD (``Node Control/Rebirth`` = true) is answered with the NBIRTH and every
  DBIRTH; a clean stop publishes the NDEATH before it disconnects.

Column types become Sparkplug datatypes: Int8…UInt64 as themselves, Float32 Float,
Float64 Double, Boolean, String, Datetime and Date DateTime, Binary Bytes, lists of those
their array types; any other type is sent as String (its text). The ``timestamp`` column is
the metrics' timestamp, not a metric.

Delivery is the ``mqtt`` transmit's: the spool's forwarder publishes a batch and deletes it
once the broker acknowledged every message (``qos`` 1, the default: Sparkplug 3.0 asks
data for QoS 0, which no broker acknowledges; ``qos: 0`` follows the letter and loses
what a broker outage catches). The MQTT session is clean, as Sparkplug edge nodes' are. A
connection lost during a write, or no acknowledgement for ``publish_timeout``, fails it:
the client starts over (a new session, the next ``bdSeq``, new births) and the batch is
published again (at-least-once).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Annotated, Any, ClassVar, Literal

import polars as pl

from connectors._mqtt import (
    NOT_IN_TOPIC,
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
    new_client,
)
from connectors._sparkplug import SPARKPLUG_NAMESPACE, parse_payload
from connectors._sparkplug_proto import Payload, set_value
from dataflows.sdk import (
    DEFAULT_SPOOL_BYTES,
    AckWait,
    Batch,
    JsonPath,
    NonEmptyStr,
    RunContext,
    SpoolMaxBytes,
    StreamKey,
    TransmitConfig,
    TransmitReport,
    Violation,
    Written,
    describe,
    error,
    transmits,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (device TEXT NOT NULL, name TEXT NOT NULL, alias INTEGER NOT NULL,
                                    datatype INTEGER NOT NULL, PRIMARY KEY (device, name));
"""
REBIRTH = "Node Control/Rebirth"

#: polars type -> Sparkplug datatype (section 6.4.16) for scalars; lists: the array types.
_SCALARS: dict[Any, int] = {pl.Int8: 1, pl.Int16: 2, pl.Int32: 3, pl.Int64: 4, pl.UInt8: 5, pl.UInt16: 6,
                            pl.UInt32: 7, pl.UInt64: 8, pl.Float32: 9, pl.Float64: 10, pl.Boolean: 11,
                            pl.String: 12, pl.Binary: 17}
_ARRAYS = {1: 22, 2: 23, 3: 24, 4: 25, 5: 26, 6: 27, 7: 28, 8: 29, 9: 30, 10: 31, 11: 32, 12: 33, 13: 34}


class SparkplugPublishError(RuntimeError):
    """The broker did not acknowledge a write in time, or the session ended during it."""


def _sparkplug_frame(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """``frame`` with ``timestamp`` as epoch milliseconds (UTC; now where missing) and every
    other column in a type Sparkplug has, and each metric column's datatype."""
    now = int(time.time() * 1000)
    columns, datatypes = [], {}
    for name, dtype in frame.schema.items():
        if name == "timestamp":
            continue
        column = pl.col(name)
        if dtype in (pl.Datetime, pl.Date) or isinstance(dtype, pl.Datetime):
            column, datatype = _epoch_ms(column, dtype), 13
        elif isinstance(dtype, pl.List) and _SCALARS.get(dtype.inner, 17) != 17:
            datatype = _ARRAYS[_SCALARS[dtype.inner]]
        elif isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Datetime):
            column, datatype = column.list.eval(_epoch_ms(pl.element(), dtype.inner)), 34
        elif dtype in _SCALARS:
            datatype = _SCALARS[dtype]
        elif dtype.is_nested():  # structs, lists of other types: their JSON text
            column, datatype = column.map_elements(lambda v: json.dumps(v, default=str),
                                                   return_dtype=pl.String), 12
        else:
            column, datatype = column.cast(pl.String), 12
        columns.append(column.alias(name))
        datatypes[name] = datatype
    stamp = (_epoch_ms(pl.col("timestamp"), frame.schema["timestamp"]).fill_null(now)
             if "timestamp" in frame.columns and (isinstance(frame.schema["timestamp"], pl.Datetime)
                                                  or frame.schema["timestamp"] == pl.Date)
             else pl.lit(now, pl.Int64))
    return frame.select(stamp.alias("timestamp"), *columns), datatypes


def _epoch_ms(column: pl.Expr, dtype: Any) -> pl.Expr:
    if dtype == pl.Date:
        column = column.cast(pl.Datetime("ms"))
    elif isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        column = column.dt.replace_time_zone("UTC")
    return column.dt.epoch("ms")


class _EdgeNode:
    """One Sparkplug B edge node session over paho: births, data, deaths, rebirths."""

    def __init__(self, config: SparkplugTransmit, ctx: RunContext, report: TransmitReport) -> None:
        self._config = config
        self._ctx = ctx
        self._report = report
        self._log = logging.getLogger(f"transmit.{config.transmit_name}")
        self._node = config.edge_node_id or config.transmit_name
        self._db = ctx.storage(config.transmit_name, "sparkplug.sqlite", _SCHEMA)
        self._registry: dict[str, dict[str, list[int]]] = {}  # device -> metric -> [alias, datatype]
        for device, name, alias, datatype in self._db.execute(
                "SELECT device, name, alias, datatype FROM metrics ORDER BY alias"):
            self._registry.setdefault(device, {})[name] = [alias, datatype]
        self._values: dict[str, dict[str, Any]] = {}  # device -> metric -> last value
        self._lock = threading.RLock()  # one message at a time: seq counts them in order
        self._seq = 0
        self._session = 0  # one more per MQTT session
        self._born: set[str] = set()  # devices with a DBIRTH in this session
        self._node_born = False
        self._host_online = config.primary_host_id is None
        self._connected = threading.Event()
        self._bdseq = self._next_bdseq()
        self._client: Any = None
        self._connect()

    # ------------------------------------------------------------------ topics and payloads

    def topic(self, kind: str, device: str | None = None) -> str:
        """``spBv1.0/<group_id>/<kind>/<edge_node_id>[/<device>]``."""
        return "/".join([SPARKPLUG_NAMESPACE, self._config.group_id, kind, self._node, *([device] if device else [])])

    def _next_bdseq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'bdseq'").fetchone()
        bdseq = 0 if row is None else (row[0] + 1) % 256
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('bdseq', ?)", (bdseq,))
        return bdseq

    def _payload(self, seq: int | None) -> Any:
        payload = Payload(timestamp=int(time.time() * 1000))
        if seq is not None:
            payload.seq = seq
        return payload

    def _death(self) -> bytes:
        payload = self._payload(None)
        payload.metrics.add(name="bdSeq", datatype=4, long_value=self._bdseq)
        return payload.SerializeToString()

    def _publish(self, kind: str, device: str | None, payload: Any) -> Any:
        """Publish with the session's next ``seq`` (the caller holds the lock)."""
        payload.seq = self._seq
        self._seq = (self._seq + 1) % 256
        return self._client.publish(self.topic(kind, device), payload.SerializeToString(), qos=self._config.qos)

    # ------------------------------------------------------------------ paho's thread

    def _connect(self) -> None:
        """Connect in paho's network thread. ``self._client`` is set first: a CONNACK may come
        back, and ``_on_connect`` publish the births through it, before ``loop_start`` returns."""
        config = self._config
        client, connect = new_client(config, config.client_id or f"factoryflow-{config.transmit_name}", clean=True)
        client.max_inflight_messages_set(config.max_inflight)
        client.max_queued_messages_set(0)
        client.will_set(self.topic("NDEATH"), self._death(), qos=1, retain=False)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        client.connect_async(config.host, config.port, **connect)
        client.loop_start()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, rc: Any, _properties: Any = None) -> None:
        if rc != 0:
            self._log.error("the broker refused the connection: %s", rc)
            return
        client.subscribe(self.topic("NCMD"), qos=1)
        if self._config.primary_host_id is not None:
            client.subscribe(f"{SPARKPLUG_NAMESPACE}/STATE/{self._config.primary_host_id}", qos=1)
        with self._lock:
            self._session += 1
            self._node_born, self._born = False, set()
            if self._host_online:
                self._births("a new session")
        self._connected.set()
        self._log.info("connected to %s:%d as edge node %s/%s (bdSeq %d)", self._config.host, self._config.port,
                       self._config.group_id, self._node, self._bdseq)

    def _on_disconnect(self, client: Any, _userdata: Any, _flags: Any, rc: Any, _properties: Any = None) -> None:
        self._connected.clear()
        with self._lock:
            self._node_born = False
            if rc != 0:  # paho reconnects by itself: the next session's Will carries the next bdSeq
                self._bdseq = self._next_bdseq()
                client.will_set(self.topic("NDEATH"), self._death(), qos=1, retain=False)
                self._log.warning("connection to %s:%d lost (%s); reconnecting", self._config.host,
                                  self._config.port, rc)

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        if message.topic.startswith(f"{SPARKPLUG_NAMESPACE}/STATE/"):
            try:
                online = bool(json.loads(message.payload)["online"])
            except (ValueError, KeyError, TypeError):
                online = message.payload == b"ONLINE"  # Sparkplug 2.2's plain text
            with self._lock:
                was, self._host_online = self._host_online, online
                if online and not was:
                    self._births(f"Primary Host {self._config.primary_host_id} online")
            if not online:
                self._log.warning("Primary Host %s is offline: holding data", self._config.primary_host_id)
            return
        try:
            command = parse_payload(message.payload)
        except ValueError:
            self._log.warning("an NCMD that is not a Sparkplug B payload on %r: ignored", message.topic)
            return
        if any(m.name == REBIRTH and m.boolean_value for m in command.metrics):
            with self._lock:
                self._births("a Rebirth request")

    def _births(self, why: str) -> None:
        """NBIRTH and a DBIRTH per known device (the caller holds the lock)."""
        self._seq = 0
        nbirth = self._payload(0)
        nbirth.metrics.add(name="bdSeq", datatype=4, long_value=self._bdseq)
        nbirth.metrics.add(name=REBIRTH, datatype=11, boolean_value=False)
        self._publish("NBIRTH", None, nbirth)
        self._node_born = True
        self._born = set()
        for device in self._registry:
            self._dbirth(device)
        self._log.info("edge node %s/%s born (%s): %d device(s)", self._config.group_id, self._node, why,
                       len(self._registry))

    def _dbirth(self, device: str) -> Any:
        payload = self._payload(None)
        values = self._values.get(device, {})
        for name, (alias, datatype) in self._registry[device].items():
            metric = payload.metrics.add(name=name, alias=alias, datatype=datatype)
            set_value(metric, datatype, values.get(name))
        self._born.add(device)
        return self._publish("DBIRTH", device, payload)

    # ------------------------------------------------------------------ writes

    def _learn(self, device: str, datatypes: dict[str, int]) -> bool:
        """Add new metrics (and changed datatypes) of ``device``; whether anything changed."""
        known = self._registry.setdefault(device, {})
        changed = False
        for name, datatype in datatypes.items():
            entry = known.get(name)
            if entry is None:
                alias = 1 + max((a for metrics in self._registry.values() for a, _ in metrics.values()), default=0)
                known[name] = [alias, datatype]
                changed = True
            elif entry[1] != datatype:
                entry[1], changed = datatype, True
        if changed:
            with self._db.transaction():
                self._db.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?)",
                                     [(device, n, a, d) for n, (a, d) in known.items()])
        return changed

    def _messages(self, batch: Batch) -> list[Any]:
        """Publish ``batch`` as DDATA (after a DBIRTH where needed); the paho infos."""
        config = self._config
        device = _format(config.device_id, batch.stream)
        frame, datatypes = _sparkplug_frame(batch.frame.drop(["asset", "stream_type"], strict=False))
        names = {column: config.metric_name.format(column=column, stream_type=batch.stream.stream_type)
                 for column in datatypes}
        datatypes = {names[c]: d for c, d in datatypes.items()}
        infos = []
        if self._learn(device, datatypes) or device not in self._born:
            infos.append(self._dbirth(device))
        registry = self._registry[device]
        columns = [(names[c], registry[names[c]][0], registry[names[c]][1]) for c in frame.columns[1:]]
        rows = frame.rows()
        for first in range(0, len(rows), config.records_per_message):
            payload = self._payload(None)
            add = payload.metrics.add
            for row in rows[first:first + config.records_per_message]:
                at = row[0]
                for (_, alias, datatype), value in zip(columns, row[1:], strict=True):
                    set_value(add(alias=alias, timestamp=at), datatype, value)
            infos.append(self._publish("DDATA", device, payload))
        if rows:
            self._values.setdefault(device, {}).update(
                {name: value for (name, _, _), value in zip(columns, rows[-1][1:], strict=True)})
        return infos

    def write(self, batches: list[Batch]) -> Written:
        """Publish ``batches`` as DDATA and return once the broker acknowledged each message.

        :raises SparkplugPublishError: not connected (or the Primary Host not online) within
            ``publish_timeout`` seconds; no acknowledgement for that long; the session ended.
        :raises WriteInterrupted: the dataflow is stopping and the broker acknowledges nothing.
        """
        config = self._config
        where = f"{config.host}:{config.port}"
        wait = AckWait(self._report, self._ctx.shutdown, f"broker {where}")
        deadline = time.monotonic() + config.publish_timeout
        records = sum(batch.frame.height for batch in batches)
        while not (self._connected.is_set() and self._node_born and self._host_online):
            why = (f"Primary Host {config.primary_host_id} is not online" if not self._host_online
                   else f"not connected to {where}")
            wait.check(records, why)
            if time.monotonic() >= deadline:
                raise SparkplugPublishError(f"transmit {config.transmit_name!r}: {why} after "
                                            f"{config.publish_timeout:g} s")
            time.sleep(0.1)
        with self._lock:
            session = self._session
            infos = [info for batch in batches for info in self._messages(batch)]
        pending, last_progress = infos, time.monotonic()
        while pending:
            try:
                pending[0].wait_for_publish(0.5)
            except (RuntimeError, ValueError):
                time.sleep(0.5)
            if self._session != session or not self._connected.is_set():
                self._restart()
                raise SparkplugPublishError(f"transmit {config.transmit_name!r}: the session with {where} ended "
                                            "during the write; it is published again after the new births")
            still = [info for info in pending if not info.is_published()]
            wait.check(len(still))
            if len(still) < len(pending):
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress >= config.publish_timeout:
                self._restart()
                raise SparkplugPublishError(f"transmit {config.transmit_name!r}: {len(still)} of {len(infos)} "
                                            f"messages not acknowledged (none for {config.publish_timeout:g} s)")
            pending = still
        return "delivered"

    def _restart(self) -> None:
        """A new client and session (the next ``bdSeq``): the old one's unacknowledged backlog,
        with its old ``seq`` numbers, is not published beside the retry after the new births."""
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            self._connected.clear()
            self._node_born = False
            self._bdseq = self._next_bdseq()
        self._connect()

    def close(self) -> None:
        """Publish the NDEATH (the session ends on purpose), then disconnect."""
        if self._connected.is_set():
            with self._lock:
                info = self._client.publish(self.topic("NDEATH"), self._death(), qos=1)
            try:
                info.wait_for_publish(5)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        self._db.close()


def _format(template: str, stream: StreamKey) -> str:
    return template.format(asset=NOT_IN_TOPIC.sub("_", stream.asset).replace("/", "_"),
                           stream_type=NOT_IN_TOPIC.sub("_", stream.stream_type).replace("/", "_"))


@transmits.register
class SparkplugTransmit(TransmitConfig, tag="sparkplug_b", kw_only=True):
    """Publishes records as a Sparkplug B edge node: births, DDATA by alias, NDEATH as its Will."""

    title: ClassVar[str] = "Sparkplug B"
    record_noun: ClassVar[str] = "messages"
    example: ClassVar[dict[str, Any]] = {
        "transmit_name": "uns", "transmit_type": "sparkplug_b", "host": "broker.plant.local", "port": 8883,
        "username": "factoryflow", "password": "${MQTT_PASSWORD}", "tls": True,
        "group_id": "plant1", "edge_node_id": "factoryflow", "device_id": "{asset}"}

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
    group_id: Annotated[NonEmptyStr, describe("Sparkplug group id (the second topic level).")]
    edge_node_id: Annotated[str | None, describe(
        "Sparkplug edge node id; default: the transmit's name.")] = None
    device_id: Annotated[NonEmptyStr, describe(
        "Device id template over {asset} and {stream_type}: each asset a device by default.")] = "{asset}"
    metric_name: Annotated[NonEmptyStr, describe(
        "Metric name template over {column} and {stream_type}.")] = "{column}"
    primary_host_id: Annotated[str | None, describe(
        "Publish only while this Primary Host Application's STATE (spBv1.0/STATE/<id>) says online.")] = None
    records_per_message: Annotated[int, describe("Records per DDATA message, at most.", ge=1)] = 1000
    qos: Annotated[Literal[0, 1], describe(
        "MQTT quality of service of births and data (1: a batch is deleted once the broker acknowledged it).")] = 1
    max_inflight: Annotated[int, describe("Messages sent but not yet acknowledged, at most.", ge=1)] = 1000
    publish_timeout: Annotated[float, describe(
        "Seconds a write waits for the connection and every acknowledgement before it fails "
        "(and is retried).", gt=0)] = 60.0
    spool_max_bytes: SpoolMaxBytes = DEFAULT_SPOOL_BYTES

    def spool_bytes(self) -> int:
        return self.spool_max_bytes

    def violations(self, path: JsonPath) -> list[Violation]:
        out = []
        for key in ("group_id", "edge_node_id", "primary_host_id"):
            value = getattr(self, key)
            if value is not None and (NOT_IN_TOPIC.search(value) or "/" in value):
                out.append(error(f"{key} {value!r} holds '/', '+' or '#': Sparkplug ids are one topic level",
                                 [*path, key]))
        for key, fields in (("device_id", {"asset": "a", "stream_type": "s"}),
                            ("metric_name", {"column": "c", "stream_type": "s"})):
            try:
                getattr(self, key).format(**fields)
            except (KeyError, IndexError, ValueError) as exc:
                out.append(error(f"{key} template {getattr(self, key)!r} does not format: only "
                                 f"{', '.join('{' + f + '}' for f in fields)} may be used ({exc!r})", [*path, key]))
        return out + connection_violations(self, path)

    def open_writer(self, ctx: RunContext, report: TransmitReport) -> _EdgeNode:
        return _EdgeNode(self, ctx, report)
