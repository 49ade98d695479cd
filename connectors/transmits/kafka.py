"""The ``kafka`` transmit (also ``rdpv3``, FactoryTX's Kafka transmit): records as Kafka messages.

Implements "Transmits" (``rdpv3``) of ``shared/specs/factorytx-digest.md``: records keep
their flat structure and become Kafka messages. One message per record:

- **key** ``asset:stream_type`` (UTF-8), so the records of a stream land in one partition
  in order (``partitioner`` ``murmur2_random``, the Java client's, so Java producers agree);
- **value** the flat JSON record (msgspec): ``asset``, ``stream_type``, then the fields;
  datetimes ISO-8601 UTC ending in ``Z``; NaN becomes ``null``;
- **headers** none by default; ``headers`` names them: ``receiver`` (the
  ``data_receiver_name``), ``source`` (file name, query, ...). With both, CSV → Kafka
  runs at two thirds of its rate without (``docs/performance.md``): confluent-kafka
  builds librdkafka's header list for every message.

Topic: ``topic`` (one fixed topic) or ``topic_prefix`` (``<prefix>.<asset>.<stream_type>``,
characters other than ``[A-Za-z0-9._-]`` replaced by ``_``, at most 249 characters);
exactly one of them.

Producer defaults (``options`` override them, key by key, as librdkafka settings):
``acks=all``, ``enable.idempotence=true``, ``compression.type=lz4``, ``linger.ms=20``,
``batch.size`` 1 MiB, a local queue of at most 100,000 messages or 64 MiB,
``message.timeout.ms`` 300000 (librdkafka retries a broker that is
down for up to 5 minutes), ``delivery.report.only.error`` (a batch is acknowledged once the
producer's queue is empty and no message failed, so no Python runs per delivered message).

librdkafka's own log lines go to ``transmit.<transmit_name>.librdkafka``, each message at
most once per 30 s with a count of the repeats held back (:class:`RepeatFilter`).

Store-and-forward (:mod:`dataflows.delivery`): ``write_batch`` stores the batches in the
transmit's spool (``$FACTORYFLOW_HOME/components/<transmit_name>/spool.sqlite``, at most
``spool_max_bytes``, 1 GiB by default) and returns, so a broker outage holds back the
other transmits only once the spool is full. The spool's forwarder encodes the records
(polars, no Python per row), produces them, waits on a full local queue (``BufferError``)
by letting librdkafka send, and deletes batches from the spool only when the broker
acknowledged every message of them. A message that librdkafka could not deliver within
``message.timeout.ms``, or that the broker refused, raises :class:`KafkaDeliveryError` in
the forwarder: the transmit's last error, then a retry with backoff, nothing dropped
(``delivery_guarantee: at_least_once``, the default: the batch in flight at a crash is
produced again).

``delivery_guarantee: exactly_once``: each forwarder write is one Kafka transaction (KIP-98)
holding the records and, in the compacted ``positions_topic``, the last spool record of each
stream among them (as Kafka Connect's exactly-once sources write their offsets, KIP-618);
a starting forwarder fences the older producer of its ``transactional.id``, reads the
positions back with ``read_committed`` and deletes from the spool what Kafka holds. With
the spool's source positions (:mod:`dataflows.positions`), a ``read_committed`` consumer
sees every record once across crashes of the job, the forwarder and the broker.

The worked example is ``KafkaTransmit.example``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec

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
    is_placeholder,
    json_values,
    records_frame,
    transmits,
    warning,
)

if TYPE_CHECKING:  # confluent-kafka loads when the transmit runs, not when the config does
    from confluent_kafka import KafkaError, Message


#: librdkafka settings factoryflow sets unless ``options`` says otherwise.
PRODUCER_DEFAULTS: dict[str, str | int | float | bool] = {
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1024 * 1024,
    "queue.buffering.max.messages": 100_000,
    "queue.buffering.max.kbytes": 64 * 1024,
    "message.timeout.ms": 300_000,
    "partitioner": "murmur2_random",
    "delivery.report.only.error": True,
}

#: The ``headers`` a message may carry, and those it carries unless the config says otherwise.
HEADERS = ("receiver", "source")
DEFAULT_HEADERS: tuple[str, ...] = ()  # the two cost confluent-kafka more than the message itself

#: librdkafka settings ``exactly_once`` adds: a transaction left open by a crashed job holds
#: ``read_committed`` consumers back for at most ``transaction.timeout.ms`` (a restarted
#: forwarder aborts it at once); a message must fail within it.
TRANSACTION_DEFAULTS: dict[str, str | int | float | bool] = {
    "transaction.timeout.ms": 60_000,
    "message.timeout.ms": 60_000,
}

#: librdkafka settings whose values are secrets (redacted in the API and the logs):
#: ``sasl.password``, ``ssl.key.password``, ``ssl.keystore.password``,
#: ``sasl.oauthbearer.client.secret``, ``ssl.key.pem``, ``sasl.oauthbearer.config``, ...
SECRET_OPTIONS = r"(?i)(password|secret|ssl\.key\.pem|sasl\.oauthbearer\.config|sasl\.jaas\.config)"

#: Rows encoded at a time: bounds the Python objects alive for a big batch.
_ENCODE_ROWS = 20_000
_ILLEGAL = re.compile(r"[^A-Za-z0-9._-]")
_DIGITS = re.compile(r"\d+")
_MAX_TOPIC = 249


def topic_name(prefix: str, stream: StreamKey) -> str:
    """``<prefix>.<asset>.<stream_type>`` with characters Kafka refuses replaced by ``_``.

    Kafka topic names are ``[A-Za-z0-9._-]``, at most 249 characters, and neither ``.``
    nor ``..``; longer names are cut at 249.
    """
    name = _ILLEGAL.sub("_", f"{prefix}.{stream.asset}.{stream.stream_type}")[:_MAX_TOPIC]
    return "_" if name in (".", "..") else name


class KafkaDeliveryError(RuntimeError):
    """The broker did not take some messages of a batch, or a step of a transaction failed
    (the forwarder retries; the spool keeps the batches).

    :ivar failed: how many messages of the batch failed (0 for a transaction's step).
    :ivar first: the first error librdkafka reported.
    """

    def __init__(self, message: str, first: KafkaError, failed: int = 0) -> None:
        super().__init__(message)
        self.failed = failed
        self.first = first

    @classmethod
    def undelivered(cls, transmit: str, failed: int, total: int, first: KafkaError) -> KafkaDeliveryError:
        """``failed`` of the ``total`` messages of a write were not delivered."""
        return cls(f"transmit {transmit!r}: {failed} of {total} messages not delivered: {first}", first, failed)

    @classmethod
    def of(cls, transmit: str, doing: str, error: KafkaError, outcome: str = "") -> KafkaDeliveryError:
        """``doing`` (``creating the positions topic``) failed with ``error``; ``outcome``
        says what becomes of the batches."""
        return cls(f"transmit {transmit!r}: {doing} failed: {error.str()}{outcome}", error)


class RepeatFilter(logging.Filter):
    """Lets each message through once per ``window`` seconds: librdkafka logs a broker
    outage about twice a second. Repeats within the window (messages equal but for
    their numbers) are held back and counted; the next one let through says how many.

    :param clock: monotonic seconds (tests inject their own).
    """

    def __init__(self, window: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # shape -> (let through at, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        shape = _DIGITS.sub("#", message)
        now = self._clock()
        passed, held = self._seen.get(shape, (-math.inf, 0))
        if now - passed < self._window:
            self._seen[shape] = (passed, held + 1)
            return False
        if held:
            record.msg, record.args = f"{message} ({held} more like it in the last {now - passed:.0f} s)", None
        if len(self._seen) > 1000:  # bounded: forget shapes not seen for a window
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._window}
        self._seen[shape] = (now, 0)
        return True


class _KafkaWriter:
    def __init__(self, config: KafkaTransmit, ctx: RunContext, report: TransmitReport) -> None:
        from confluent_kafka import Producer

        self._config = config
        self._ctx = ctx
        self._report = report
        self._name = config.transmit_name
        self._log = logging.getLogger(f"transmit.{self._name}")
        client_log = logging.getLogger(f"transmit.{self._name}.librdkafka")
        if not any(isinstance(f, RepeatFilter) for f in client_log.filters):
            client_log.addFilter(RepeatFilter())
        self._producer = Producer({**self._settings(), "logger": client_log,
                                   "on_delivery": self._on_delivery, "error_cb": self._on_error})
        self._errors: list[KafkaError] = []
        self._client_error: str | None = None  # librdkafka's last error ("1/1 brokers are down")

    def _settings(self) -> dict[str, Any]:
        return self._config.producer_config()

    def _on_error(self, err: KafkaError) -> None:
        self._client_error = err.str()

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:  # with delivery.report.only.error, only failures come here
            self._errors.append(err)

    def _produce(self, batch: Batch, wait: AckWait) -> int:
        if not batch.frame.height:
            return 0
        topic = self._config.topic or topic_name(self._config.topic_prefix or "", batch.stream)
        key = str(batch.stream).encode()
        values = {"receiver": batch.receiver, "source": batch.source}
        headers = [(name, values[name].encode()) for name in self._config.headers]
        produce = self._producer.produce
        frame = records_frame(batch)
        for part in frame.iter_slices(_ENCODE_ROWS):  # bounded Python objects
            if headers:
                for value in json_values(part):
                    try:
                        produce(topic, value, key, headers=headers)
                    except BufferError:
                        self._produce_one(topic, value, key, headers, wait)
            else:  # no keyword at all: headers=None costs confluent-kafka half as much again
                for value in json_values(part):
                    try:
                        produce(topic, value, key)
                    except BufferError:
                        self._produce_one(topic, value, key, headers, wait)
        return frame.height

    def _produce_one(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]],
                     wait: AckWait) -> None:
        """Produce one message, waiting while the local queue is full (librdkafka sends meanwhile)."""
        while True:
            try:
                if headers:
                    self._producer.produce(topic, value, key, headers=headers)
                else:
                    self._producer.produce(topic, value, key)
                return
            except BufferError:
                self._producer.poll(0.05)
                wait.check(len(self._producer), self._client_error)

    def write(self, batches: list[Batch]) -> Written:
        """Produce every record of ``batches`` and return once the broker acknowledged them
        all: the producer's queue is empty and no delivery failed.

        While no message is acknowledged for 10 s, the transmit's last error says so; when
        the dataflow stops, a broker that acknowledges nothing for 2 s ends the wait.

        :raises KafkaDeliveryError: some messages were not delivered.
        :raises WriteInterrupted: the dataflow is stopping and the broker acknowledges nothing.
        """
        wait = AckWait(self._report, self._ctx.shutdown, f"broker {self._config.bootstrap_servers}")
        total = sum(self._produce(batch, wait) for batch in batches)
        started = time.monotonic()
        last_log = started
        while (left := self._producer.flush(0.5)) > 0:
            wait.check(left, self._client_error)
            if time.monotonic() - last_log >= 30:
                last_log = time.monotonic()
                self._log.warning("waiting %.0f s for the broker to acknowledge %d of %d messages",
                                  last_log - started, left, total)
        if self._errors:
            failure = KafkaDeliveryError.undelivered(self._name, len(self._errors), total, self._errors[0])
            self._errors = []
            raise failure
        return "delivered"  # every message acknowledged

    def close(self) -> None:
        # a write returns only once its messages are acknowledged, or raises with its batches kept
        # in the spool: what is still queued here is sent again anyway, so a dead broker gets 2 s
        left = self._producer.flush(2 if self._ctx.shutdown.is_set() else 30)
        if left:
            self._log.warning("closing with %d messages unacknowledged (they are resent on restart)",
                              left)


class _TransactionalKafkaWriter(_KafkaWriter):
    """``delivery_guarantee: exactly_once``: each write is one Kafka transaction holding the
    records and, in the positions topic, the last spool record id of each stream among
    them (KIP-98 transactions; the positions topic plays Kafka Connect's offsets topic's
    part, KIP-618). A forwarder that starts (:meth:`committed`) fences the older producer of
    its ``transactional.id`` (a zombie's transaction is aborted and can never commit), then
    reads the positions back with ``read_committed``; the spool deletes what is there."""

    def __init__(self, config: KafkaTransmit, ctx: RunContext, report: TransmitReport) -> None:
        self._prefix = config.transactional_prefix()
        # the shard alone in one home; in a cluster of homes (each starts its own forwarders),
        # the process too, or the homes' forwarders of one shard would fence each other
        self._shard_id = (f"{self._prefix}.{ctx.shard}" if ctx.cluster_process is None
                          else f"{self._prefix}.{ctx.cluster_process}.{ctx.shard}")
        super().__init__(config, ctx, report)
        self._in_transaction = False

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "transactional.id": self._shard_id}

    def committed(self, spool: str) -> dict[str, int]:
        from confluent_kafka import KafkaException

        self._ensure_positions_topic()
        try:
            self._producer.init_transactions(30)
        except KafkaException as exc:
            raise KafkaDeliveryError.of(self._name, "starting its transactions", exc.args[0]) from None
        marks: dict[str, int] = {}
        for key, value in self._read_positions():
            stream = key.removeprefix(f"{self._prefix}|")
            if stream != key and value.get("spool") == spool and isinstance(value.get("record"), int):
                marks[stream] = value["record"]
        return marks

    def _ensure_positions_topic(self) -> None:
        """Create ``positions_topic`` (compacted, one partition, the broker's replication
        factor) unless it exists.

        :raises KafkaDeliveryError: the broker refused or did not answer within 30 s.
        """
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self._config.client_config())
        topic = NewTopic(self._config.positions_topic, num_partitions=1, replication_factor=-1,
                         config={"cleanup.policy": "compact"})
        try:
            admin.create_topics([topic], request_timeout=30)[self._config.positions_topic].result(35)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaDeliveryError.of(self._name, f"creating the positions topic "
                                            f"{self._config.positions_topic!r}", exc.args[0]) from None

    def _read_positions(self, timeout: float = 60.0) -> list[tuple[str, dict[str, Any]]]:
        """Every committed message of ``positions_topic``, oldest first, as (key, value);
        read with ``isolation.level=read_committed`` up to its end.

        :raises KafkaDeliveryError: the topic could not be read to its end within ``timeout`` s.
        """
        import uuid

        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        topic = self._config.positions_topic
        consumer = Consumer({**self._config.client_config(), "group.id": f"factoryflow-positions-{uuid.uuid4()}",
                             "isolation.level": "read_committed", "enable.auto.commit": False,
                             "enable.partition.eof": True, "fetch.wait.max.ms": 10})
        try:
            deadline = time.monotonic() + timeout
            partitions: list[int] = []
            while not partitions and time.monotonic() < deadline:  # a topic just created may not show yet
                metadata = consumer.list_topics(topic, timeout=10).topics[topic]
                partitions = list(metadata.partitions) if metadata.error is None else []
                if not partitions:
                    time.sleep(0.2)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            out: list[tuple[str, dict[str, Any]]] = []
            ended: set[int] = set()
            while not partitions or len(ended) < len(partitions):
                if time.monotonic() > deadline:
                    raise KafkaDeliveryError.of(self._name, f"reading the positions topic "
                                                f"{topic!r} to its end within {timeout:.0f} s",
                                                KafkaError(KafkaError._TIMED_OUT))
                message = consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ended.add(message.partition())
                        continue
                    raise KafkaDeliveryError.of(self._name, "reading the positions topic", error)
                with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError):
                    value = msgspec.json.decode(message.value() or b"null")
                    if isinstance(value, dict):
                        out.append(((message.key() or b"").decode(), value))
            return out
        finally:
            consumer.close()

    def write(self, batches: list[Batch]) -> Written:
        """One transaction of ``batches`` without marks (:meth:`write_marked`)."""
        return self.write_marked(batches, "", {})

    def write_marked(self, batches: list[Batch], spool: str, marks: dict[str, int]) -> Written:
        """Produce ``batches`` and their ``marks`` in one transaction; return once it committed.

        :raises KafkaDeliveryError: the transaction was aborted (nothing of it is visible to a
            ``read_committed`` consumer) or its outcome is unknown; the forwarder starts a new
            writer, which reads the positions back.
        :raises WriteInterrupted: the dataflow is stopping and the broker answers nothing.
        """
        from confluent_kafka import KafkaException

        wait = AckWait(self._report, self._ctx.shutdown, f"broker {self._config.bootstrap_servers}")
        try:
            self._producer.begin_transaction()
            self._in_transaction = True
            for batch in batches:
                self._produce(batch, wait)
            for stream, record in marks.items():
                self._produce_one(self._config.positions_topic, msgspec.json.encode({"spool": spool, "record": record}),
                                  f"{self._prefix}|{stream}".encode(), [], wait)
            while True:
                try:
                    self._producer.commit_transaction(0.5)
                    break
                except KafkaException as exc:
                    if not exc.args[0].retriable():
                        raise
                    wait.check(max(1, len(self._producer)), self._client_error)
        except KafkaException as exc:
            raise KafkaDeliveryError.of(self._name, "a transaction", exc.args[0], "; the spool keeps its batches: "
                                        "they are sent again unless the positions topic shows them "
                                        "committed") from None
        finally:
            self._errors = []
        self._in_transaction = False
        return "delivered"

    def close(self) -> None:
        if self._in_transaction:  # not committed: the next writer's init_transactions aborts it anyway
            with contextlib.suppress(Exception):
                self._producer.abort_transaction(2)


OptionValue = str | int | float | bool


def _librdkafka_violations(settings: dict[str, Any], path: JsonPath) -> list[Violation]:
    """librdkafka's own verdict on the producer ``settings`` (an unknown property, a value it
    refuses), found by creating a producer that never connects (no ``bootstrap.servers``)."""
    import confluent_kafka

    try:
        confluent_kafka.Producer({**{k: v for k, v in settings.items() if k != "bootstrap.servers"},
                                  "log_level": 0})
    except confluent_kafka.KafkaException as exc:
        return [error(f"librdkafka refuses the producer settings: {exc.args[0].str()}", path)]
    return []


@transmits.register
class KafkaTransmit(TransmitConfig, tag="kafka", kw_only=True):
    """Produces one Kafka message per record (confluent-kafka), acknowledged by the broker."""

    title: ClassVar[str] = "Kafka"
    record_noun: ClassVar[str] = "messages"
    example: ClassVar[dict[str, Any]] = {
        "transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": "kafka:9092",
        "topic_prefix": "plant1", "options": {"compression.type": "zstd"}}

    bootstrap_servers: Annotated[NonEmptyStr, describe("Kafka brokers, 'host:port,host:port'.")]
    topic: Annotated[NonEmptyStr | None, describe("One fixed topic for every record.")] = None
    topic_prefix: Annotated[
        NonEmptyStr | None, describe("Topic per stream: '<topic_prefix>.<asset>.<stream_type>'.")
    ] = None
    options: Annotated[
        dict[str, OptionValue], describe("librdkafka producer settings, passed through.",
                                         secret_keys=SECRET_OPTIONS)
    ] = msgspec.field(default_factory=dict)
    headers: Annotated[list[Literal["receiver", "source"]], describe(
        "Kafka headers on every message: 'receiver' (the data_receiver_name), 'source' (the file "
        "name, query, ...). None by default: with both, the Kafka path runs at two thirds of its "
        "rate without (docs/performance.md).")] = msgspec.field(default_factory=lambda: list(DEFAULT_HEADERS))
    spool_max_bytes: SpoolMaxBytes = DEFAULT_SPOOL_BYTES
    delivery_guarantee: Annotated[Literal["at_least_once", "exactly_once"], describe(
        "'exactly_once': each write is a Kafka transaction with the positions it reaches, so a "
        "read_committed consumer sees every record once across crashes (docs/delivery.md); "
        "'at_least_once': a crash may send the records in flight again.")] = "at_least_once"
    transactional_id: Annotated[NonEmptyStr | None, describe(
        "exactly_once: the prefix of the producers' transactional.id and of this transmit's keys in "
        "the positions topic; unique per installation on one Kafka cluster. Default "
        "'factoryflow.<transmit_name>'.")] = None
    positions_topic: Annotated[NonEmptyStr, describe(
        "exactly_once: the compacted topic the committed positions are kept in (created when "
        "missing).")] = "factoryflow.positions"

    def spool_bytes(self) -> int:
        return self.spool_max_bytes

    def transactional_prefix(self) -> str:
        """``transactional_id``, by default ``factoryflow.<transmit_name>``."""
        return self.transactional_id or f"factoryflow.{self.transmit_name}"

    def client_config(self) -> dict[str, Any]:
        """The settings an admin client or consumer of this transmit's cluster shares with
        its producer: the brokers, and the ``options`` for security and the client id."""
        shared = ("security.", "sasl.", "ssl.", "client.id", "socket.", "broker.address.family")
        return {"bootstrap.servers": self.bootstrap_servers,
                "logger": logging.getLogger(f"transmit.{self.transmit_name}.librdkafka"),
                **{k: v for k, v in self.options.items() if k.startswith(shared)}}

    def violations(self, path: JsonPath) -> list[Violation]:
        out = []
        if (self.topic is None) == (self.topic_prefix is None):
            out.append(error("give exactly one of 'topic' and 'topic_prefix'", path))
        if self.topic is not None and _ILLEGAL.search(self.topic):
            out.append(error(f"topic {self.topic!r} has characters Kafka refuses (legal: "
                             "A-Z a-z 0-9 . _ -)", [*path, "topic"]))
        for i, name in enumerate(self.headers):
            if name in self.headers[:i]:
                out.append(error(f"header {name!r} is named twice", [*path, "headers", i]))
        if "bootstrap.servers" in self.options:
            out.append(error("set the brokers with 'bootstrap_servers', not in options",
                             [*path, "options", "bootstrap.servers"]))
        settings = self.producer_config()
        if not any(is_placeholder(value) for value in self.options.values()):
            out.extend(_librdkafka_violations(settings, [*path, "options"]))
        if self.exactly_once and "transactional.id" in self.options:
            out.append(error("set the transactional id with 'transactional_id' (a prefix; each forwarder "
                             "adds its shard), not in options", [*path, "options", "transactional.id"]))
        if self.exactly_once and (str(settings["acks"]).lower() not in ("all", "-1")
                                  or str(settings["enable.idempotence"]).lower() not in ("true", "1")):
            out.append(error("exactly_once needs acks=all and enable.idempotence=true (Kafka transactions)",
                             [*path, "options"]))
        if str(settings["acks"]).lower() not in ("all", "-1"):
            out.append(warning(f"acks={settings['acks']}: the broker may lose acknowledged records",
                               [*path, "options", "acks"]))
        if str(settings["enable.idempotence"]).lower() not in ("true", "1"):
            out.append(warning("enable.idempotence is off: broker retries may duplicate or reorder "
                               "records", [*path, "options", "enable.idempotence"]))
        return out

    def producer_config(self) -> dict[str, Any]:
        """The librdkafka settings of the producer: defaults (with ``exactly_once``, also
        :data:`TRANSACTION_DEFAULTS`), then ``options``."""
        defaults = {**PRODUCER_DEFAULTS, **TRANSACTION_DEFAULTS} if self.exactly_once else PRODUCER_DEFAULTS
        return {**defaults, **self.options, "bootstrap.servers": self.bootstrap_servers}

    @property
    def exactly_once(self) -> bool:
        """Whether ``delivery_guarantee`` is ``exactly_once``."""
        return self.delivery_guarantee == "exactly_once"

    def open_writer(self, ctx: RunContext, report: TransmitReport) -> _KafkaWriter:
        return _TransactionalKafkaWriter(self, ctx, report) if self.exactly_once else _KafkaWriter(self, ctx, report)


@transmits.register
class RdpV3Transmit(KafkaTransmit, tag="rdpv3", kw_only=True):
    """The ``kafka`` transmit under FactoryTX's name for it."""

    title: ClassVar[str] = "Sight Machine RDPv3 (Kafka)"
    example: ClassVar[dict[str, Any]] = {
        "transmit_name": "rdpv3", "transmit_type": "rdpv3", "bootstrap_servers": "kafka:9092",
        "topic": "factoryflow"}
