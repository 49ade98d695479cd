"""The ``mqtt`` transmit: records as MQTT messages (paho-mqtt), each acknowledged by the broker.

FactoryTX documents an MQTT transmit (``shared/specs/factorytx-digest.md``, "Transmits")
without its keys; this one names them with MQTT's terms:

- **connection**: ``host``, ``port`` (1883; 8883 is the TLS convention), ``client_id``
  (``factoryflow-<transmit_name>`` by default), ``username`` / ``password`` (secret),
  ``keepalive`` in seconds, ``protocol_version`` ``"3.1.1"`` or ``"5"``, and TLS:
  ``tls`` on, ``ca_file`` (the system's roots when unset), ``cert_file`` / ``key_file``
  for a client certificate;
- **messages**: ``topic``, a template over ``{asset}`` and ``{stream_type}``
  (``factoryflow/{asset}/{stream_type}`` by default; ``+``, ``#`` and NUL are replaced
  by ``_`` in the values); ``payload`` ``"record"`` (one message per record: the flat
  JSON object of the Kafka transmit, ``asset``, ``stream_type``, then the fields,
  datetimes ISO-8601 UTC) or ``"batch"`` (one message per batch: a JSON array of them);
  ``qos`` 1 (or 2); ``retain`` false.

Delivery: store-and-forward like Kafka (:mod:`dataflows.delivery`). ``write_batch``
stores the batches in the transmit's spool and returns; the spool's forwarder publishes
them and deletes a batch only once the broker acknowledged every message of it (PUBACK,
or PUBCOMP at QoS 2). A broker that is down or drops the connection makes the write fail
after ``publish_timeout`` seconds: the transmit's last error (``/v1/status``), a retry
with backoff, the batch kept. paho resends what was unacknowledged on its reconnect, and
a failed batch is published again, so a record may arrive twice (at-least-once).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Annotated, Any, ClassVar, Literal

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
    json_values,
    records_frame,
    transmits,
)


def topic_for(template: str, stream: StreamKey) -> str:
    """The topic of ``stream``'s records: ``template`` with ``{asset}`` and
    ``{stream_type}`` filled in, the MQTT wildcards ``+`` and ``#`` (and NUL) in them
    replaced by ``_``."""
    return template.format(asset=NOT_IN_TOPIC.sub("_", stream.asset),
                           stream_type=NOT_IN_TOPIC.sub("_", stream.stream_type))


class MqttPublishError(RuntimeError):
    """The broker did not acknowledge every message of a write in time."""


class _MqttWriter:
    """One paho client, connected in the background (it reconnects by itself)."""

    def __init__(self, config: MqttTransmit, ctx: RunContext, report: TransmitReport) -> None:
        self._config = config
        self._ctx = ctx
        self._report = report
        self._log = logging.getLogger(f"transmit.{config.transmit_name}")
        self._connected = threading.Event()
        self._client = self._connect()

    def _connect(self) -> Any:
        config = self._config
        client, connect = new_client(config, config.client_id or f"factoryflow-{config.transmit_name}")
        client.max_inflight_messages_set(config.max_inflight)
        client.max_queued_messages_set(0)  # unbounded: a write waits for its own acknowledgements
        self._connected.clear()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.connect_async(config.host, config.port, **connect)
        client.loop_start()
        return client

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, rc: Any, _properties: Any = None) -> None:
        if rc == 0:
            self._connected.set()
            self._log.info("connected to %s:%d", self._config.host, self._config.port)
        else:
            self._log.error("the broker refused the connection: %s", rc)

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, rc: Any, _properties: Any = None) -> None:
        self._connected.clear()
        if rc != 0:
            self._log.warning("connection to %s:%d lost (%s); reconnecting", self._config.host,
                              self._config.port, rc)

    def _messages(self, batch: Batch) -> list[tuple[str, bytes]]:
        topic = topic_for(self._config.topic, batch.stream)
        values = json_values(records_frame(batch))
        if self._config.payload == "batch":
            return [(topic, b"[" + b",".join(values) + b"]")]
        return [(topic, value) for value in values]

    def write(self, batches: list[Batch]) -> Written:
        """Publish every record of ``batches`` and return once the broker acknowledged each.

        While nothing is acknowledged for 10 s the transmit's last error says so; when the
        dataflow stops, a broker that acknowledges nothing for 2 s ends the wait.

        :raises MqttPublishError: not connected within ``publish_timeout`` seconds, or no
            acknowledgement came for that long while some are missing.
        :raises WriteInterrupted: the dataflow is stopping and the broker acknowledges nothing.
        """
        where = f"{self._config.host}:{self._config.port}"
        wait = AckWait(self._report, self._ctx.shutdown, f"broker {where}")
        deadline = time.monotonic() + self._config.publish_timeout
        records = sum(batch.frame.height for batch in batches)
        while not self._connected.wait(0.5):
            wait.check(records, f"not connected to {where}")
            if time.monotonic() >= deadline:
                raise MqttPublishError(f"transmit {self._config.transmit_name!r}: not connected to {where} "
                                       f"after {self._config.publish_timeout:g} s")
        infos = []
        for batch in batches:
            for topic, payload in self._messages(batch):
                infos.append(self._client.publish(topic, payload, qos=self._config.qos, retain=self._config.retain))
        pending, last_progress = infos, time.monotonic()
        while pending:  # fails only when no acknowledgement came for publish_timeout seconds
            try:
                pending[0].wait_for_publish(0.5)
            except (RuntimeError, ValueError):  # published while disconnected: paho sends it on reconnect
                time.sleep(0.5)
            still = [info for info in pending if not info.is_published()]
            wait.check(len(still))
            if len(still) < len(pending):
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress >= self._config.publish_timeout:
                break
            pending = still
        unacknowledged = len(pending)
        if unacknowledged:
            # start over with a new client: the old one would send its backlog beside the retry's
            self.close()
            self._client = self._connect()
            raise MqttPublishError(f"transmit {self._config.transmit_name!r}: {unacknowledged} of {len(infos)} "
                                   f"messages not acknowledged (none for {self._config.publish_timeout:g} s)")
        return "delivered"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@transmits.register
class MqttTransmit(TransmitConfig, tag="mqtt", kw_only=True):
    """Publishes records to an MQTT broker (QoS 1), each acknowledged by the broker."""

    title: ClassVar[str] = "MQTT"
    record_noun: ClassVar[str] = "messages"
    example: ClassVar[dict[str, Any]] = {
        "transmit_name": "mqtt", "transmit_type": "mqtt", "host": "broker.plant.local", "port": 8883,
        "username": "factoryflow", "password": "${MQTT_PASSWORD}", "tls": True,
        "topic": "plant1/{asset}/{stream_type}"}

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
    topic: Annotated[NonEmptyStr, describe(
        "Topic template over {asset} and {stream_type}.")] = "factoryflow/{asset}/{stream_type}"
    payload: Annotated[Literal["record", "batch"], describe(
        "One message per record, or one per batch (a JSON array).")] = "record"
    qos: Annotated[Literal[1, 2], describe("MQTT quality of service.")] = 1
    retain: Annotated[bool, describe("Ask the broker to retain the last message of each topic.")] = False
    max_inflight: Annotated[int, describe("Messages sent but not yet acknowledged, at most.", ge=1)] = 1000
    publish_timeout: Annotated[float, describe(
        "Seconds a write waits for the connection and every acknowledgement before it fails "
        "(and is retried).", gt=0)] = 60.0
    spool_max_bytes: SpoolMaxBytes = DEFAULT_SPOOL_BYTES

    def spool_bytes(self) -> int:
        return self.spool_max_bytes

    def violations(self, path: JsonPath) -> list[Violation]:
        out = []
        try:
            topic = topic_for(self.topic, StreamKey("asset", "stream_type"))
        except (KeyError, IndexError, ValueError) as exc:
            out.append(error(f"topic template {self.topic!r} does not format: only {{asset}} and "
                             f"{{stream_type}} may be used ({exc!r})", [*path, "topic"]))
        else:
            if NOT_IN_TOPIC.search(topic):
                out.append(error(f"topic {self.topic!r} holds a wildcard (+ or #): a message's topic "
                                 "names one topic", [*path, "topic"]))
        return out + connection_violations(self, path)

    def open_writer(self, ctx: RunContext, report: TransmitReport) -> _MqttWriter:
        return _MqttWriter(self, ctx, report)
