"""The kafka / rdpv3 transmit against a real Apache Kafka broker (KRaft, started by the tests)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pytest

from connectors.transmits.kafka import (
    PRODUCER_DEFAULTS,
    KafkaTransmit,
    RepeatFilter,
    topic_name,
)
from dataflows.config import load, validate
from dataflows.ledger import Ledger, ledger_path
from dataflows.records import Batch, StreamKey
from dataflows.runtime import RunContext
from dataflows.spool import spooled_batches
from dataflows.testing import poll_until, sink_partition
from tests.conftest import NAB_ROWS
from tests.connectors.conformance import TransmitHarness, transmit_harness
from tests.nab import expected_utc
from tests.services.kafka import KafkaBroker, kafka_broker
from tests.services.process import free_port
from tests.simulators.sightmachine import SightMachineSimulator


def transmit(**keys: Any) -> KafkaTransmit:
    doc = {"data_receiver": [], "transforms": [],
           "data_transmit": [{"transmit_name": "kafka", "transmit_type": "kafka", **keys}]}
    return load(doc, runnable=False).data_transmit[0]


def violations(**keys: Any) -> list[tuple[list[Any], str, str]]:
    doc = {"data_receiver": [], "transforms": [], "data_transmit": [
        {"transmit_name": "k", "bootstrap_servers": "127.0.0.1:9092", **keys}]}
    return [(v.json_path, v.level, v.description) for v in validate(doc)]


def test_config_topic_rules_and_delivery_warnings() -> None:
    assert violations(transmit_type="kafka", topic="plant.events") == []
    assert violations(transmit_type="rdpv3", topic_prefix="plant1") == []
    both = violations(transmit_type="rdpv3", topic="a", topic_prefix="b")
    assert both == [(["data_transmit", 0], "error", "give exactly one of 'topic' and 'topic_prefix'")]
    assert violations(transmit_type="kafka")[0][2] == "give exactly one of 'topic' and 'topic_prefix'"
    assert [v[:2] for v in violations(transmit_type="kafka", topic="bad topic!")] == [
        (["data_transmit", 0, "topic"], "error")]
    weak = violations(transmit_type="kafka", topic="t",
                      options={"acks": 1, "enable.idempotence": False, "bootstrap.servers": "x:1"})
    assert [v[:2] for v in weak] == [
        (["data_transmit", 0, "options", "bootstrap.servers"], "error"),
        (["data_transmit", 0, "options", "acks"], "warning"),
        (["data_transmit", 0, "options", "enable.idempotence"], "warning")]
    assert violations(transmit_type="kafka", topic="t", options={"linger.msec": 5}) \
        == [(["data_transmit", 0, "options"], "error",
             'librdkafka refuses the producer settings: No such configuration property: "linger.msec"')]
    assert violations(transmit_type="kafka", topic="t", options={"compression.type": "nonsense"})[0][2] == (
        'librdkafka refuses the producer settings: Invalid value "nonsense" for configuration property '
        '"compression.codec"')
    assert violations(transmit_type="kafka", topic="t", headers=["source", "receiver", "source"]) == [
        (["data_transmit", 0, "headers", 2], "error", "header 'source' is named twice")]
    unknown = violations(transmit_type="kafka", topic="t", headers=["asset"])
    assert unknown[0][:2] == (["data_transmit", 0, "headers"], "error") and "'asset'" in unknown[0][2]


def test_producer_defaults_are_safe_and_options_override_them() -> None:
    settings = transmit(bootstrap_servers="b:9092", topic="t",
                        options={"compression.type": "zstd", "linger.ms": 5}).producer_config()
    assert settings["acks"] == "all" and settings["enable.idempotence"] is True
    assert settings["compression.type"] == "zstd" and settings["linger.ms"] == 5
    assert settings["bootstrap.servers"] == "b:9092"
    assert PRODUCER_DEFAULTS["compression.type"] in ("lz4", "zstd")


def test_topic_names_are_sanitised() -> None:
    assert topic_name("plant1", StreamKey("press 1/a", "cycle:x")) == "plant1.press_1_a.cycle_x"
    assert topic_name("p", StreamKey("Ünïcode", "s")) == "p._n_code.s"
    assert len(topic_name("p", StreamKey("a" * 300, "s"))) == 249


def frame(n: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame({"timestamp": pl.datetime_range(datetime(2024, 1, 1), datetime(2024, 1, 1, 1),
                                                        "1s", eager=True, time_zone="UTC")[start:start + n],
                         "seq": list(range(start, start + n)), "temp.c": [20.5] * n})


def test_write_batch_survives_a_full_local_queue_and_counts_delivery(tmp_path: Path,
                                                                     kafka: KafkaBroker) -> None:
    kafka.create_topic("queue-full", 2)
    config = transmit(bootstrap_servers=kafka.bootstrap, topic="queue-full",
                      options={"queue.buffering.max.messages": 50, "linger.ms": 1})
    partition = sink_partition(config, RunContext(home=tmp_path))
    batch = Batch("r", StreamKey("press", "cycle"), frame(3000), "query", ack_key="k1")
    partition.write_batch([batch])  # 3000 messages through a queue of 50: BufferError handled
    partition.close()
    messages = kafka.consume("queue-full", 3000)
    assert len(messages) == 3000
    assert [json.loads(m.value)["seq"] for m in messages] == list(range(3000))  # one key: one partition
    first = json.loads(messages[0].value)
    assert first == {"asset": "press", "stream_type": "cycle", "timestamp": "2024-01-01T00:00:00Z",
                     "seq": 0, "temp.c": 20.5}
    assert messages[0].key == b"press:cycle"
    assert messages[0].headers == {}  # none by default (docs/performance.md: they cost a third)
    ledger = Ledger(ledger_path(tmp_path))
    assert ledger.progress("kafka", "press:cycle") == (3000, "2024-01-01T00:49:59.000000Z")
    assert ledger.acked_by("r", "press:cycle", "k1") == {"kafka"}
    status = ledger.transmit_status("kafka")
    assert status.records_delivered == 3000 and status.last_success_at and status.last_error is None


@pytest.mark.parametrize("headers", [[], ["source"]])
def test_headers_are_the_ones_configured(tmp_path: Path, kafka: KafkaBroker, headers: list[str]) -> None:
    """``headers`` chooses the Kafka headers of every message (none: confluent-kafka's faster
    path), through a full local queue too."""
    topic = f"headers-{len(headers)}"
    kafka.create_topic(topic, 1)
    config = transmit(bootstrap_servers=kafka.bootstrap, topic=topic, headers=headers,
                      options={"queue.buffering.max.messages": 50, "linger.ms": 1})
    partition = sink_partition(config, RunContext(home=tmp_path))
    partition.write_batch([Batch("r", StreamKey("press", "cycle"), frame(500), "query")])
    partition.close()
    messages = kafka.consume(topic, 500)
    assert [json.loads(m.value)["seq"] for m in messages] == list(range(500))
    assert {tuple(m.headers.items()) for m in messages} == {tuple((h, b"query") for h in headers)}


def test_an_undeliverable_batch_stays_in_the_spool_marked_until_the_broker_takes_it(
        tmp_path: Path, kafka: KafkaBroker) -> None:
    config = transmit(bootstrap_servers=f"127.0.0.1:{free_port()}", topic="spooled",
                      options={"message.timeout.ms": 1500})
    ctx = RunContext(home=tmp_path)
    partition = sink_partition(config, ctx)
    batch = Batch("r", StreamKey("press", "cycle"), frame(10), "query", ack_key="k1")
    partition.write_batch([batch])  # returns at once: the batch is durable in the spool
    ledger = Ledger(ledger_path(tmp_path))
    assert ledger.acked_by("r", "press:cycle", "k1") == {"kafka"}
    poll_until(lambda: "10 of 10 messages not delivered" in (ledger.transmit_status("kafka").last_error or ""),
               timeout=60)
    partition.close()
    assert ledger.progress("kafka", "press:cycle") == (0, None)  # nothing counted as delivered
    spool = ctx.component_dir("kafka") / "spool.sqlite"
    assert [b.frame["seq"].to_list() for b in spooled_batches(spool)] == [list(range(10))]  # kept
    kafka.create_topic("spooled", 1)
    back = transmit(bootstrap_servers=kafka.bootstrap, topic="spooled")  # the broker is back
    partition = sink_partition(back, ctx)
    poll_until(lambda: ledger.progress("kafka", "press:cycle")[0] == 10, timeout=60)
    partition.close()
    assert [json.loads(m.value)["seq"] for m in kafka.consume("spooled", 10)] == list(range(10))
    assert spooled_batches(spool) == [] and ledger.transmit_status("kafka").last_error is None


def nab_values(path: Path) -> list[float]:
    """The ``value`` column of a NAB file, in file order."""
    return [float(line.split(b",")[1]) for line in path.read_bytes().splitlines()[1:]]


def growing_nab(tmp_path: Path, nab_csv: Path, first: int) -> tuple[Path, Path, list[bytes]]:
    """A directory holding ``nab.csv`` with its header and first ``first`` rows: (directory,
    file, every data line) so a test can append the rest as it goes."""
    header, *rows = nab_csv.read_bytes().splitlines(keepends=True)
    data = tmp_path / "in"
    data.mkdir()
    (data / "nab.csv").write_bytes(header + b"".join(rows[:first]))
    return data, data / "nab.csv", rows


def nab_receiver(directory: Path, assets: list[str]) -> dict[str, Any]:
    return {"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 0.5,
            "connections": [{"data_directory": str(directory)}],
            "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
            "streams": [{"asset": asset, "stream_type": "csv", "parser": "csv", "file_filter": ["nab.csv"]}
                        for asset in assets]}


def test_dataflow_to_a_fixed_topic_and_per_stream_topics(tmp_path: Path, kafka: KafkaBroker,
                                                         nab_machine_csv: Path, flows: Any) -> None:
    data = tmp_path / "in"
    data.mkdir()
    shutil.copy(nab_machine_csv, data / "nab.csv")
    kafka.create_topic("nab-all", 3)
    for asset in ("m1", "m2"):
        kafka.create_topic(f"plant.{asset}.csv", 2)
    config = {"data_receiver": [nab_receiver(data, ["m1", "m2"])],
              "transforms": [{"transform_name": "plant time", "transform_type": "convert_timestamps",
                              "field_names": ["timestamp"], "timezone": "America/Chicago"}],
              "data_transmit": [
                  {"transmit_name": "all", "transmit_type": "kafka", "bootstrap_servers": kafka.bootstrap,
                   "topic": "nab-all"},
                  {"transmit_name": "per stream", "transmit_type": "rdpv3",
                   "bootstrap_servers": kafka.bootstrap, "topic_prefix": "plant", "filter_stream": ["*:csv"],
                   "headers": ["receiver", "source"]}]}
    flow = flows(tmp_path / "home", config)
    flow.start()
    ledger = Ledger(ledger_path(flow.home))
    flow.wait_for(lambda: all(ledger.progress(t, f"{a}:csv")[0] >= NAB_ROWS
                              for t in ("all", "per stream") for a in ("m1", "m2")), what="delivery")
    assert flow.stop(signal.SIGTERM) == 0

    expected = expected_utc(nab_machine_csv, "America/Chicago")
    file_values = nab_values(nab_machine_csv)
    everything = kafka.consume("nab-all", 2 * NAB_ROWS)
    assert len(everything) == 2 * NAB_ROWS
    assert {tuple(m.headers) for m in everything} == {()}  # the default: no headers
    for asset in ("m1", "m2"):
        mine = [m for m in everything if m.key == f"{asset}:csv".encode()]
        assert len({m.partition for m in mine}) == 1  # one key, one partition: ordered
        records = [json.loads(m.value) for m in sorted(mine, key=lambda m: m.offset)]
        assert [r["value"] for r in records] == file_values  # the file's order, per key
        assert {(r["timestamp"], r["value"]) for r in records} == expected
        assert set(records[0]) == {"asset", "stream_type", "timestamp", "value"}
        assert records[0]["asset"] == asset and records[0]["stream_type"] == "csv"
        topic = kafka.consume(f"plant.{asset}.csv", NAB_ROWS)
        assert len(topic) == NAB_ROWS
        assert {m.key for m in topic} == {f"{asset}:csv".encode()}
        assert {m.headers["receiver"] for m in topic} == {b"files"}
        assert {m.headers["source"] for m in topic} == {str(data / "nab.csv").encode()}
        assert {(json.loads(m.value)["timestamp"], json.loads(m.value)["value"]) for m in topic} == expected


def test_broker_down_for_20_seconds_loses_nothing(tmp_path: Path, nab_machine_csv: Path,
                                                  flows: Any) -> None:
    """The broker stops mid-run while rows keep arriving, and comes back 20 s later."""
    data, target, rows = growing_nab(tmp_path, nab_machine_csv, 6000)
    with kafka_broker() as broker:  # its own broker: the session's is never stopped
        broker.create_topic("outage", 3)
        config = {"data_receiver": [nab_receiver(data, ["nab"])], "transforms": [],
                  "data_transmit": [{"transmit_name": "kafka", "transmit_type": "kafka",
                                     "bootstrap_servers": broker.bootstrap, "topic": "outage"}]}
        flow = flows(tmp_path / "home", config)
        flow.start()
        ledger = Ledger(ledger_path(flow.home))
        flow.wait_for(lambda: ledger.progress("kafka", "nab:csv")[0] >= 6000, what="first rows")
        broker.stop()
        down_at = time.monotonic()
        with target.open("ab") as out:  # rows keep arriving while the broker is down
            out.write(b"".join(rows[6000:15000]))
        time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))
        assert ledger.progress("kafka", "nab:csv")[0] == 6000  # nothing counted while down
        broker.start()
        with target.open("ab") as out:
            out.write(b"".join(rows[15000:]))
        flow.wait_for(lambda: ledger.progress("kafka", "nab:csv")[0] >= NAB_ROWS, timeout=300,
                      what="every row after the outage")
        assert flow.stop(signal.SIGTERM) == 0
        messages = broker.consume("outage", NAB_ROWS)
    values = [json.loads(m.value)["value"] for m in sorted(messages, key=lambda m: m.offset)]
    assert len(messages) == NAB_ROWS  # the idempotent producer's retries added no duplicate
    assert values == nab_values(nab_machine_csv)  # and none is out of order


@transmit_harness
class KafkaHarness(TransmitHarness):
    """A topic of the session's broker, read back with a fresh consumer."""

    transmit_type = "kafka"

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.broker: KafkaBroker = request.getfixturevalue("kafka")
        self.topic = f"conformance-{self.transmit_type}-{tmp_path.name}"
        self.broker.create_topic(self.topic, 1)

    def transmit(self, home: Path) -> dict[str, Any]:
        return {"transmit_name": "conformance", "transmit_type": self.transmit_type,
                "bootstrap_servers": self.broker.bootstrap, "topic": self.topic}

    def durable_seqs(self, home: Path, expected: int) -> list[int]:
        # the spool first: a batch produced meanwhile is then in the topic, never missed
        spooled = [s for b in spooled_batches(home / "components" / "conformance" / "spool.sqlite")
                   for s in b.frame["seq"].to_list()]
        messages = self.broker.consume(self.topic, expected - len(spooled), timeout=10, idle=0.5)
        return spooled + [json.loads(m.value)["seq"] for m in messages]


@transmit_harness
class RdpV3Harness(KafkaHarness):
    """The same under FactoryTX's name."""

    transmit_type = "rdpv3"


def test_a_broker_outage_logs_each_librdkafka_message_once_per_30_seconds(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = transmit(bootstrap_servers=f"127.0.0.1:{free_port()}", topic="nowhere",
                      options={"message.timeout.ms": 6000})
    partition = sink_partition(config, RunContext(home=tmp_path))
    caplog.set_level(logging.DEBUG, logger="transmit.kafka.librdkafka")
    partition.write_batch([Batch("r", StreamKey("press", "cycle"), frame(5), "query")])
    ledger = Ledger(ledger_path(tmp_path))
    poll_until(lambda: "not delivered" in (ledger.transmit_status("kafka").last_error or ""), timeout=60)
    partition.close()
    lines = [r for r in caplog.records if r.name == "transmit.kafka.librdkafka"]
    assert lines and "Connection refused" in lines[0].getMessage()
    assert len(lines) <= 3, [r.getMessage() for r in lines]  # was about 2 lines a second


def test_repeat_filter_counts_what_it_held_back() -> None:
    now = [0.0]
    repeat = RepeatFilter(window=30, clock=lambda: now[0])

    def passes(message: str) -> str | None:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, message, None, None)
        return record.getMessage() if repeat.filter(record) else None

    assert passes("broker 1: refused after 3ms") == "broker 1: refused after 3ms"
    for step in range(1, 20):
        now[0] = step
        assert passes(f"broker 1: refused after {step}ms") is None
    assert passes("another message") == "another message"
    now[0] = 31
    assert passes("broker 1: refused after 9ms") == "broker 1: refused after 9ms (19 more like it in the last 31 s)"
    now[0] = 62
    assert passes("broker 1: refused after 9ms") == "broker 1: refused after 9ms"


def test_a_kafka_outage_holds_back_no_other_transmit(tmp_path: Path, nab_machine_csv: Path, flows: Any,
                                                     sight_machine: SightMachineSimulator) -> None:
    """Kafka down 30 s while rows keep arriving: the Sight Machine transmit keeps delivering,
    and Kafka catches up from its spool afterwards with every row once, in order."""
    data, target, rows = growing_nab(tmp_path, nab_machine_csv, 3000)
    with kafka_broker() as broker:  # its own broker: the session's is never stopped
        broker.create_topic("isolated", 1)
        config = {"data_receiver": [nab_receiver(data, ["nab"])], "transforms": [], "data_transmit": [
            {"transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": broker.bootstrap,
             "topic": "isolated"},
            sight_machine.transmit()]}
        flow = flows(tmp_path / "home", config)
        flow.start()
        ledger = Ledger(ledger_path(flow.home))

        def delivered(transmit: str) -> int:
            return ledger.progress(transmit, "nab:csv")[0]

        flow.wait_for(lambda: delivered("kafka") == delivered("sight_machine") == 3000, what="first rows")
        broker.stop()
        down_at = time.monotonic()
        for start, end in ((3000, 9000), (9000, 12000)):  # rows keep arriving while Kafka is down
            with target.open("ab") as out:
                out.write(b"".join(rows[start:end]))
            flow.wait_for(lambda end=end: delivered("sight_machine") == end, timeout=20,
                          what=f"Sight Machine at {end} rows while Kafka is down")
            assert delivered("kafka") == 3000
        seconds_down = time.monotonic() - down_at
        time.sleep(max(0.0, 30 - seconds_down))
        assert delivered("kafka") == 3000 and delivered("sight_machine") == 12000
        broker.start()
        flow.wait_for(lambda: delivered("kafka") == 12000, timeout=120, what="Kafka catching up")
        assert flow.stop(signal.SIGTERM) == 0
        messages = broker.consume("isolated", 12000)
    print(f"Sight Machine delivered 9000 rows during the first {seconds_down:.1f} s of a 30 s Kafka outage")
    assert [json.loads(m.value)["value"] for m in messages] == nab_values(nab_machine_csv)[:12000]
    assert [s["fieldvalues"]["value"]["value"] for s in sight_machine.sslogs] == \
        nab_values(nab_machine_csv)[:12000]


def test_a_dead_broker_is_the_last_error_within_seconds_and_never_holds_a_stop(
        tmp_path: Path, nab_machine_csv: Path, flows: Any) -> None:
    """No broker listens: within ~10 s the transmit's last error says the broker acknowledges
    nothing, and why (librdkafka's own error); a SIGTERM ends the dataflow in seconds, not
    after the forwarder's 20 s drain, and the spool keeps every row for the next start."""
    data, _, _ = growing_nab(tmp_path, nab_machine_csv, 3000)
    config = {"data_receiver": [nab_receiver(data, ["nab"])], "transforms": [],
              "data_transmit": [{"transmit_name": "kafka", "transmit_type": "kafka",
                                 "bootstrap_servers": f"127.0.0.1:{free_port()}", "topic": "nowhere"}]}
    flow = flows(tmp_path / "home", config)
    flow.start()
    ledger = Ledger(ledger_path(flow.home))
    started = time.monotonic()
    flow.wait_for(lambda: ledger.transmit_status("kafka").last_error is not None, timeout=30,
                  what="the dead broker as the transmit's last error")
    reported_after = time.monotonic() - started
    error = ledger.transmit_status("kafka").last_error or ""
    assert "has acknowledged none of" in error and "waiting, nothing is dropped" in error, error
    assert "Connect to" in error or "brokers are down" in error, error  # librdkafka's reason
    stopping = time.monotonic()
    assert flow.stop(signal.SIGTERM, timeout=60) == 0
    stopped_in = time.monotonic() - stopping
    assert stopped_in < 10, f"the stop took {stopped_in:.1f} s"
    kept = spooled_batches(flow.home / "components" / "kafka" / "spool.sqlite")
    assert sum(batch.frame.height for batch in kept) == 3000
    assert "stopping with" in flow.log() and "the spool keeps them for the next start" in flow.log()
    print(f"dead broker: last error after {reported_after:.1f} s, SIGTERM to exit {stopped_in:.1f} s")


def test_a_producer_that_cannot_start_is_reported_and_the_spool_kept(tmp_path: Path) -> None:
    # validation refuses such options; here they reach the producer as settings that broke after
    # validation would (a CA file removed, say)
    config = msgspec.structs.replace(transmit(bootstrap_servers="127.0.0.1:9", topic="t"),
                                     options={"compression.type": "nonsense"})
    ctx = RunContext(home=tmp_path)
    partition = sink_partition(config, ctx)
    partition.write_batch([Batch("r", StreamKey("press", "cycle"), frame(3), "query")])
    ledger = Ledger(ledger_path(tmp_path))
    poll_until(lambda: "forwarder failed" in (ledger.transmit_status("kafka").last_error or ""), timeout=60)
    assert "Invalid value \"nonsense\"" in (ledger.transmit_status("kafka").last_error or "")
    partition.close()
    assert [b.frame["seq"].to_list() for b in spooled_batches(ctx.component_dir("kafka") / "spool.sqlite")] \
        == [[0, 1, 2]]


def test_the_forwarder_process_logs_through_the_job_and_dies_with_it(tmp_path: Path, nab_machine_csv: Path,
                                                                      flows: Any) -> None:
    import psutil

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(nab_machine_csv, data / "nab.csv")
    config = {"data_receiver": [nab_receiver(data, ["nab"])], "transforms": [], "data_transmit": [
        {"transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": f"127.0.0.1:{free_port()}",
         "topic": "nowhere", "options": {"message.timeout.ms": 2000}}]}
    flow = flows(tmp_path / "home", config)
    flow.start()
    assert flow.proc is not None
    flow.wait_for(lambda: "messages not delivered" in flow.log(), timeout=60, what="the forwarder's error")
    line = next(line for line in flow.log().splitlines() if "messages not delivered" in line)
    assert " forwarder-kafka transmit.kafka ERROR transmit 'kafka': " in line  # in the job's log, its format
    forwarders = [p for p in psutil.Process(flow.proc.pid).children(recursive=True)
                  if "spawn_main" in " ".join(p.cmdline())]
    assert len(forwarders) == 1
    flow.kill()
    _, alive = psutil.wait_procs(forwarders, timeout=10)
    assert alive == []


def test_a_forwarder_process_that_dies_on_its_own_is_replaced_and_nothing_lost(
        tmp_path: Path, kafka: KafkaBroker, nab_machine_csv: Path, flows: Any) -> None:
    """The forwarder SIGKILLed twice while the dataflow runs (as the OOM killer would):
    each time a new one takes over the spool (the second after a backoff), and every row
    reaches Kafka once, in order."""
    import psutil

    data, target, rows = growing_nab(tmp_path, nab_machine_csv, 3000)
    kafka.create_topic("replaced", 1)
    config = {"data_receiver": [nab_receiver(data, ["nab"])], "transforms": [], "data_transmit": [
        {"transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": kafka.bootstrap,
         "topic": "replaced"}]}
    flow = flows(tmp_path / "home", config)
    flow.start()
    assert flow.proc is not None
    ledger = Ledger(ledger_path(flow.home))

    def forwarder() -> psutil.Process | None:
        found = [p for p in psutil.Process(flow.proc.pid).children(recursive=True)
                 if "spawn_main" in " ".join(p.cmdline())]
        assert len(found) <= 1
        return found[0] if found else None

    killed: list[int] = []
    for delivered, end in ((3000, 9000), (9000, len(rows))):
        flow.wait_for(lambda delivered=delivered: ledger.progress("kafka", "nab:csv")[0] == delivered,
                      what=f"{delivered} rows")
        process = forwarder()
        assert process is not None and process.pid not in killed
        process.kill()  # not reaped here: the job's own bookkeeping must notice
        killed.append(process.pid)
        flow.wait_for(lambda n=len(killed): flow.log().count("the forwarder process ended on its own") == n,
                      what="the job noticing")
        with target.open("ab") as out:  # rows arrive while no forwarder runs
            out.write(b"".join(rows[delivered:end]))
    flow.wait_for(lambda: ledger.progress("kafka", "nab:csv")[0] == NAB_ROWS, timeout=120, what="every row")
    notices = [line for line in flow.log().splitlines() if "ended on its own" in line]
    print("\n".join(notices))
    assert "(exit code -9)" in notices[0] and "starting a new one in 0.0 s" in notices[0]
    assert "starting a new one in 0.0 s" not in notices[1]  # a second death within 60 s backs off
    assert (process := forwarder()) is not None and process.pid not in killed
    assert flow.stop(signal.SIGTERM) == 0
    messages = kafka.consume("replaced", NAB_ROWS)
    assert len(messages) == NAB_ROWS
    assert [json.loads(m.value)["value"] for m in sorted(messages, key=lambda m: m.offset)] == \
        nab_values(nab_machine_csv)


def test_two_workers_forward_through_two_forwarders_each_stream_in_order(
        tmp_path: Path, kafka: KafkaBroker, nab_machine_csv: Path, flows: Any) -> None:
    """``-w 2``: one forwarder per worker, each with half the streams; every record once,
    each stream in its file's order."""
    import psutil

    data = tmp_path / "in"
    data.mkdir()
    shutil.copy(nab_machine_csv, data / "nab.csv")
    assets = ["line1", "line2", "line3", "line4"]
    kafka.create_topic("two-workers", 4)
    config = {"data_receiver": [nab_receiver(data, assets)], "transforms": [], "data_transmit": [
        {"transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": kafka.bootstrap,
         "topic": "two-workers"}]}
    flow = flows(tmp_path / "home", config, workers=2)
    flow.start()
    assert flow.proc is not None
    ledger = Ledger(ledger_path(flow.home))
    flow.wait_for(lambda: all(ledger.progress("kafka", f"{a}:csv")[0] == NAB_ROWS for a in assets),
                  timeout=120, what="every stream")
    forwarders = [p for p in psutil.Process(flow.proc.pid).children(recursive=True)
                  if "spawn_main" in " ".join(p.cmdline())]
    assert len(forwarders) == 2
    log = flow.log()
    for shard, mine in ((0, ["line1", "line3"]), (1, ["line2", "line4"])):  # sorted streams, in turns
        lines = [line for line in log.splitlines() if f" forwarder-kafka-{shard} transmit.kafka INFO " in line]
        assert {a for a in assets if any(f"{a}:csv: +" in line for line in lines)} == set(mine)
    assert flow.stop(signal.SIGTERM) == 0
    messages = kafka.consume("two-workers", 4 * NAB_ROWS)
    assert len(messages) == 4 * NAB_ROWS
    for asset in assets:
        mine = sorted((m for m in messages if m.key == f"{asset}:csv".encode()), key=lambda m: m.offset)
        assert [json.loads(m.value)["value"] for m in mine] == nab_values(nab_machine_csv)
