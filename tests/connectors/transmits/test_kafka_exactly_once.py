"""``delivery_guarantee: exactly_once`` against a real Kafka broker (KRaft): the forwarder
SIGKILLed mid-transaction, the broker SIGKILLed mid-transaction, two workers with a SIGKILL of
the job, a restream during the run. A ``read_committed`` consumer sees each record once (a
restreamed stream twice), each stream in its file's order (issue 28)."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from connectors.transmits.kafka import KafkaTransmit
from dataflows.config import load
from dataflows.context import RunContext
from dataflows.control import ControlStore, control_path
from dataflows.ledger import Ledger, ledger_path
from dataflows.report import AckWait
from dataflows.spool import spool_path, spooled_batches
from tests.flowrun import FlowProcess
from tests.services.kafka import KafkaBroker, Message, kafka_broker

ROWS = 100_000


def _data(tmp_path: Path, rows: int = ROWS) -> Path:
    data = tmp_path / "in"
    data.mkdir()
    lines = "".join(f"{n},2026-01-01T00:00:00Z,{n * 0.5}\n" for n in range(rows))
    (data / "data.csv").write_text("n,timestamp,value\n" + lines)
    return data


def _config(data: Path, bootstrap: str, topic: str, assets: list[str]) -> dict[str, Any]:
    return {"data_receiver": [{
        "data_receiver_name": "files", "protocol": "localfile", "poll_interval": 0.5,
        "connections": [{"data_directory": str(data)}], "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
        "streams": [{"asset": a, "stream_type": "csv", "parser": "csv", "file_filter": ["data.csv"]}
                    for a in assets]}],
        "transforms": [], "data_transmit": [{
            "transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": bootstrap, "topic": topic,
            "delivery_guarantee": "exactly_once"}]}


def _per_stream(messages: list[Message]) -> dict[str, list[int]]:
    """Each stream's ``n`` values in the order the topic holds them (by partition offset)."""
    out: dict[str, list[int]] = {}
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        out.setdefault((message.key or b"").decode(), []).append(json.loads(message.value or b"{}")["n"])
    return out


def _delivered(flow: FlowProcess, streams: list[str]) -> int:
    ledger = Ledger(ledger_path(flow.home))
    try:
        return sum(ledger.progress("kafka", s)[0] for s in streams)
    finally:
        ledger.close()


def _forwarders(flow: FlowProcess) -> list[Any]:
    import psutil

    assert flow.proc is not None
    found = []
    for process in psutil.Process(flow.proc.pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:  # a killed one not reaped yet, or gone
            continue
    return found


def test_the_forwarder_sigkilled_five_times_mid_transaction_sends_each_record_once(
        tmp_path: Path, kafka: KafkaBroker, flows: Any) -> None:
    assets = ["a", "b", "c", "d"]
    kafka.create_topic("eos.forwarder", 3)
    rows = 3 * ROWS  # the forwarder produces only between kills: enough for five at 300k records/s
    flow = flows(tmp_path / "home", _config(_data(tmp_path, rows), kafka.bootstrap, "eos.forwarder", assets))
    streams = [f"{a}:csv" for a in assets]
    flow.start()
    rng = random.Random(5)
    killed = []
    seen: list[Any] = []

    def a_new_forwarder() -> bool:  # one look at the processes: they change between two
        seen[:] = _forwarders(flow)
        return len(seen) == 1 and seen[0].pid not in killed

    while len(killed) < 5:
        flow.wait_for(a_new_forwarder, what="a new forwarder")
        process = seen[0]
        time.sleep(rng.uniform(0.3, 1.2))
        if _delivered(flow, streams) >= len(assets) * rows:
            pytest.fail(f"the run ended before 5 kills mid-transaction ({len(killed)} so far)")
        process.kill()
        killed.append(process.pid)
    flow.wait_for(lambda: _delivered(flow, streams) == len(assets) * rows, timeout=240, what="every record")
    log = flow.log()
    assert flow.stop(signal.SIGTERM) == 0
    messages = kafka.consume("eos.forwarder", len(assets) * rows)
    print(f"\n5 forwarder SIGKILLs; {len(assets) * rows} records; {len(messages)} messages read_committed; "
          f"{log.count('committed before the last stop')} restarts found committed batches in the spool")
    assert _per_stream(messages) == {s: list(range(rows)) for s in streams}


def test_a_broker_sigkilled_mid_transaction_loses_and_repeats_nothing(tmp_path: Path, flows: Any) -> None:
    assets = ["a", "b"]
    streams = [f"{a}:csv" for a in assets]
    with kafka_broker() as broker:  # its own broker: the session's is never stopped
        broker.create_topic("eos.broker", 2)
        flow = flows(tmp_path / "home", _config(_data(tmp_path, 4 * ROWS), broker.bootstrap, "eos.broker",
                                                 assets))
        flow.start()
        flow.wait_for(lambda: bool(spooled_batches(spool_path(RunContext(flow.home), "kafka"))), timeout=120,
                      what="batches in the spool")
        time.sleep(0.5)  # the forwarder's transaction is under way: nothing is committed before it all is
        assert _delivered(flow, streams) < len(assets) * 4 * ROWS, "the run ended before the broker was killed"
        broker.kill()
        time.sleep(5)
        broker.start()
        flow.wait_for(lambda: _delivered(flow, streams) == len(assets) * 4 * ROWS, timeout=300,
                      what="every record")
        assert flow.stop(signal.SIGTERM) == 0
        messages = broker.consume("eos.broker", len(assets) * 4 * ROWS, timeout=120)
    print(f"\nbroker SIGKILLed for 5 s mid-transaction; {len(messages)} messages read_committed")
    assert _per_stream(messages) == {s: list(range(4 * ROWS)) for s in streams}


def test_two_workers_with_sigkills_of_the_job_send_each_record_once_in_order(
        tmp_path: Path, kafka: KafkaBroker, flows: Any) -> None:
    assets = ["a", "b", "c", "d"]
    streams = [f"{a}:csv" for a in assets]
    kafka.create_topic("eos.workers", 4)
    flow = flows(tmp_path / "home", _config(_data(tmp_path), kafka.bootstrap, "eos.workers", assets), workers=2)
    rng = random.Random(2)
    for _ in range(3):
        flow.start()
        time.sleep(rng.uniform(2.0, 4.0))
        flow.kill()
    flow.start()
    flow.wait_for(lambda: len(_forwarders(flow)) == 2, what="a forwarder per worker")
    flow.wait_for(lambda: _delivered(flow, streams) == len(assets) * ROWS, timeout=240, what="every record")
    assert flow.stop(signal.SIGTERM) == 0
    messages = kafka.consume("eos.workers", len(assets) * ROWS)
    assert _per_stream(messages) == {s: list(range(ROWS)) for s in streams}


def test_a_restream_during_the_run_sends_that_stream_again_once(
        tmp_path: Path, kafka: KafkaBroker, flows: Any) -> None:
    assets = ["a", "b"]
    streams = [f"{a}:csv" for a in assets]
    kafka.create_topic("eos.restream", 2)
    flow = flows(tmp_path / "home", _config(_data(tmp_path, 4 * ROWS), kafka.bootstrap, "eos.restream", assets))
    flow.start()
    flow.wait_for(lambda: _delivered(flow, streams) >= 50_000, timeout=120, what="the first records")
    store = ControlStore(control_path(flow.home))
    store.request_restream([("files", "a:csv")])
    flow.wait_for(lambda: store.applied("files", "a:csv") > 0, what="the restream applied")
    store.close()
    flow.kill()  # and a crash after the restream: it is neither lost nor applied twice
    flow.start()
    flow.wait_for(lambda: _delivered(flow, streams) >= 3 * 4 * ROWS, timeout=240, what="every record")
    assert flow.stop(signal.SIGTERM) == 0
    messages = kafka.consume("eos.restream", 3 * 4 * ROWS)
    counts = {s: Counter(v) for s, v in _per_stream(messages).items()}
    assert set(counts) == set(streams)
    assert set(counts["a:csv"].values()) == {2} and len(counts["a:csv"]) == 4 * ROWS
    assert set(counts["b:csv"].values()) == {1} and len(counts["b:csv"]) == 4 * ROWS


def test_exactly_once_settings_are_validated() -> None:
    from dataflows.config import validate

    base = {"transmit_name": "k", "transmit_type": "kafka", "bootstrap_servers": "127.0.0.1:9", "topic": "t",
            "delivery_guarantee": "exactly_once"}

    def problems(**keys: Any) -> list[str]:
        document = {"data_receiver": [], "transforms": [], "data_transmit": [{**base, **keys}]}
        return [v.description for v in validate(document) if v.level == "error"]

    assert problems() == []
    assert any("acks=all" in p for p in problems(options={"acks": "1"}))
    assert any("transactional_id" in p for p in problems(options={"transactional.id": "x"}))
    assert any("twice" in p for p in problems(delivery_guarantee="twice"))
    transmit = load({"data_receiver": [], "transforms": [], "data_transmit": [base]}, runnable=False).data_transmit[0]
    assert isinstance(transmit, KafkaTransmit)
    settings = transmit.producer_config()
    assert settings["transaction.timeout.ms"] == settings["message.timeout.ms"] == 60_000
    assert transmit.transactional_prefix() == "factoryflow.k"


def test_a_zombie_forwarder_is_fenced_and_its_transaction_never_seen(tmp_path: Path, kafka: KafkaBroker) -> None:
    """A forwarder that hangs mid-transaction while a new one of its shard starts (its
    ``init_transactions`` fences the old producer): the zombie's commit fails, none of its
    records is visible to a ``read_committed`` consumer, and the new one's marks stand."""
    import polars as pl
    from confluent_kafka import KafkaException

    from dataflows.records import Batch, StreamKey
    from dataflows.report import TransmitReport

    kafka.create_topic("eos.zombie", 1)
    transmit = load({"data_receiver": [], "transforms": [], "data_transmit": [{
        "transmit_name": "zombie", "transmit_type": "kafka", "bootstrap_servers": kafka.bootstrap,
        "topic": "eos.zombie", "delivery_guarantee": "exactly_once"}]}, runnable=False).data_transmit[0]
    report = TransmitReport(Ledger(tmp_path / "ledger.sqlite"), "zombie", "messages")

    def batch(first: int) -> Batch:
        return Batch("files", StreamKey("a", "csv"), pl.DataFrame({"n": list(range(first, first + 100))}), "f")

    zombie = transmit.open_writer(RunContext(home=tmp_path), report)
    assert zombie.committed("spool-1") == {}
    zombie._producer.begin_transaction()  # the zombie is mid-transaction when it hangs
    zombie._in_transaction = True
    zombie._produce(batch(0), AckWait(report, zombie._ctx.shutdown, "broker"))
    zombie._producer.flush(10)
    fresh = transmit.open_writer(RunContext(home=tmp_path), report)
    assert fresh.committed("spool-1") == {}  # fences the zombie
    fresh.write_marked([batch(100)], "spool-1", {"a:csv": 7})
    with pytest.raises(KafkaException, match="(?i)fenced|epoch"):
        zombie._producer.commit_transaction(10)
    assert [json.loads(m.value or b"{}")["n"] for m in kafka.consume("eos.zombie", 100)] == list(range(100, 200))
    again = transmit.open_writer(RunContext(home=tmp_path), report)
    assert again.committed("spool-1") == {"a:csv": 7}  # marks of another spool file would not count
    for writer in (zombie, fresh, again):
        writer.close()
    report.close()
