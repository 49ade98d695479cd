"""The remotedatapost transmit against the Sight Machine simulator: wire format, batching,
backoff, credentials refused, the outbox's budget and its survival of SIGKILL."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import bson
import polars as pl
import pytest

from connectors.transmits.remotedatapost import RemoteDataPost, Sender, json_records, sslogs
from dataflows.config import ConfigError, load, validate
from dataflows.ledger import Ledger, ledger_path
from dataflows.outbox import Outbox
from dataflows.records import Batch, StreamKey
from dataflows.report import TransmitReport
from dataflows.runtime import RunContext
from dataflows.testing import sink_partition
from tests.conftest import NAB_ROWS
from tests.connectors.conformance import TransmitHarness, transmit_harness
from tests.simulators.sightmachine import SightMachineSimulator

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STREAM = StreamKey("press", "cycle")


def rdp(entry: dict[str, Any]) -> RemoteDataPost:
    return load({"data_receiver": [], "transforms": [], "data_transmit": [entry]}, runnable=False,
                environ={}).data_transmit[0]


def make_sender(tmp_path: Path, config: RemoteDataPost, **kwargs: Any) -> Sender:
    report = TransmitReport(Ledger(ledger_path(tmp_path)), config.transmit_name, config.record_noun)
    return Sender(config, Outbox(tmp_path / "outbox.sqlite"), report, **kwargs)


def fill(sender: Sender, n: int, start: int = 0) -> None:
    frame = pl.DataFrame({"timestamp": [datetime(2024, 1, 1, tzinfo=UTC)] * n,
                          "seq": list(range(start, start + n))})
    sender.outbox.append([(str(STREAM), ts, body)
                          for ts, body in sslogs(Batch("r", STREAM, frame, "q"), NOW)])


def seqs(sim: SightMachineSimulator) -> list[int]:
    return [s["fieldvalues"]["seq"]["value"] for s in sim.sslogs]


def test_sslogs_reach_the_endpoint_byte_exact(tmp_path: Path, sight_machine: SightMachineSimulator) -> None:
    chicago = ZoneInfo("America/Chicago")
    frame = pl.DataFrame({
        "timestamp": [datetime(2024, 3, 10, 1, 30, tzinfo=chicago), None],
        "temp.c": [21.5, math.nan], "counter": [7, None], "label": ["ok", None],
        "started": [datetime(2024, 3, 10, 6, 0, 0, 250000), datetime(2024, 3, 10)],
        "day": [date(2024, 3, 9), date(2024, 3, 10)], "asset": ["x", "x"]},
        schema_overrides={"timestamp": pl.Datetime("us", "America/Chicago")})
    sender = make_sender(tmp_path, rdp(sight_machine.transmit()))
    rows = sslogs(Batch("r", STREAM, frame, "q"), NOW)
    sender.outbox.append([(str(STREAM), ts, body) for ts, body in rows])
    assert sender.send_once(force=True)
    expected = [
        {"timestamp": "2024-03-10T07:30:00.000000", "source": "press", "sslog_type": "cycle",
         "fieldvalues": {"temp_c": {"value": 21.5}, "label": {"value": "ok"},
                         "started": {"value": "2024-03-10T06:00:00.250000"}, "day": {"value": "2024-03-09"}},
         "counter": 7},
        {"timestamp": "2024-05-01T12:00:00.000000", "source": "press", "sslog_type": "cycle",
         "fieldvalues": {"started": {"value": "2024-03-10T00:00:00.000000"}, "day": {"value": "2024-03-10"}}},
    ]
    [post] = sight_machine.posts
    assert post.media_type == "application/bson"
    assert post.payload == b"".join(bson.encode(doc) for doc in expected)
    assert sight_machine.sslogs == expected
    assert [ts for ts, _ in rows] == ["2024-03-10T07:30:00.000000Z", "2024-05-01T12:00:00.000000Z"]
    assert sender.outbox.depth() == (0, 0)
    status = sender.report.ledger.transmit_status("sight_machine")
    assert status.records_delivered == 2 and status.outbox_records == 0 and status.last_success_at


def test_json_format_posts_flat_records(tmp_path: Path, sight_machine: SightMachineSimulator) -> None:
    sender = make_sender(tmp_path, rdp(sight_machine.transmit(format="json")))
    frame = pl.DataFrame({"timestamp": [datetime(2024, 1, 1, tzinfo=UTC)], "temp.c": [1.5]})
    sender.outbox.append([(str(STREAM), ts, body) for ts, body in json_records(Batch("r", STREAM, frame, "q"))])
    assert sender.send_once(force=True)
    [post] = sight_machine.posts
    assert post.media_type == "application/x-ndjson"
    assert [json.loads(line) for line in post.payload.splitlines()] == [
        {"asset": "press", "stream_type": "cycle", "timestamp": "2024-01-01T00:00:00Z", "temp.c": 1.5}]


def test_posts_are_bounded_by_records_and_by_bytes(tmp_path: Path,
                                                  sight_machine: SightMachineSimulator) -> None:
    sender = make_sender(tmp_path, rdp(sight_machine.transmit(max_request_records=10, poll_interval=0)))
    fill(sender, 25)
    while sender.send_once():
        pass
    assert [len(p.sslogs) for p in sight_machine.posts] == [10, 10, 5]
    assert sender.outbox.depth() == (0, 0)
    record = len(sslogs(Batch("r", STREAM, pl.DataFrame({"timestamp": [NOW], "seq": [100]}), "q"), NOW)[0][1])
    sight_machine.posts.clear()
    limit = 3 * record + record // 2
    sender = make_sender(tmp_path / "b", rdp(sight_machine.transmit(max_request_size_bytes=limit,
                                                                    poll_interval=0)))
    fill(sender, 10, start=100)
    while sender.send_once():
        pass
    assert [len(p.sslogs) for p in sight_machine.posts] == [3, 3, 3, 1]
    assert all(len(p.payload) <= limit for p in sight_machine.posts)
    assert seqs(sight_machine) == list(range(100, 110))


def test_poll_interval_holds_partial_posts_with_an_injected_clock(
        tmp_path: Path, sight_machine: SightMachineSimulator) -> None:
    now = [1000.0]
    sender = make_sender(tmp_path, rdp(sight_machine.transmit(poll_interval=30, max_request_records=50)),
                         clock=lambda: now[0])
    fill(sender, 5)
    assert sender.send_once()  # nothing posted yet: the first post goes at once
    fill(sender, 5, start=5)
    now[0] += 10
    assert not sender.send_once() and len(sight_machine.posts) == 1  # partial, 10 s after a post
    now[0] += 21
    assert sender.send_once() and len(sight_machine.posts) == 2  # 31 s: due
    fill(sender, 50, start=10)
    assert sender.send_once() and len(sight_machine.posts) == 3  # a full post goes at once
    assert seqs(sight_machine) == list(range(60))


def test_failures_back_off_exponentially_with_jitter_capped_at_30_seconds(
        tmp_path: Path, sight_machine: SightMachineSimulator) -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the injected clock: no real waiting
        waits.append(seconds)
        status = sender.report.ledger.transmit_status("sight_machine")
        assert status.last_error is not None and "HTTP 503" in status.last_error
        if len(waits) == 11:
            sight_machine.mode = "ok"

    sight_machine.mode = "503"
    sender = make_sender(tmp_path, rdp(sight_machine.transmit()), sleep=sleep)
    fill(sender, 3)
    assert sender.send_once(force=True)
    assert [a.status for a in sight_machine.attempts] == [503] * 11 + [200]
    for attempt, wait in enumerate(waits[:5]):
        assert 2 ** attempt <= wait <= 2 ** attempt + 1, (attempt, wait)
    assert waits[5:] == [30.0] * 6  # a down endpoint is probed at least every 30 s
    assert seqs(sight_machine) == [0, 1, 2]
    status = sender.report.ledger.transmit_status("sight_machine")
    assert status.last_error is None and status.records_delivered == 3


def test_timeouts_and_dropped_connections_are_retried(tmp_path: Path,
                                                     sight_machine: SightMachineSimulator) -> None:
    modes = iter(["hang", "ok"])

    def sleep(seconds: float) -> None:
        sight_machine.mode = next(modes)

    sight_machine.mode = "drop"
    sight_machine.hang_seconds = 3
    sender = make_sender(tmp_path, rdp(sight_machine.transmit(timeout=0.5)), sleep=sleep)
    fill(sender, 4)
    assert sender.send_once(force=True)
    assert seqs(sight_machine) == [0, 1, 2, 3]
    assert sight_machine.attempts[0].status == "dropped" and sight_machine.attempts[-1].status == 200
    assert sender.outbox.depth() == (0, 0)


def test_refused_credentials_pause_the_transmit_until_its_settings_change(
        tmp_path: Path, sight_machine: SightMachineSimulator) -> None:
    wrong = rdp(sight_machine.transmit(API_key="expired"))
    sender = make_sender(tmp_path, wrong)
    fill(sender, 5)
    assert sender.send_once(force=True)
    assert sender.paused and [a.status for a in sight_machine.attempts] == [401]
    status = sender.report.ledger.transmit_status("sight_machine")
    assert status.paused and "HTTP 401" in (status.last_error or "")
    assert status.outbox_records is None or status.outbox_records == 5
    assert sender.outbox.depth()[0] == 5  # nothing lost

    again = make_sender(tmp_path, wrong)  # a restart with the same settings stays paused
    again.stop.set()
    again.run()
    assert again.paused and len(sight_machine.attempts) == 1

    fixed = make_sender(tmp_path, rdp(sight_machine.transmit()))  # the config changed
    fixed.resume_or_stay_paused()
    assert not fixed.paused and not fixed.report.ledger.transmit_status("sight_machine").paused
    assert fixed.send_once(force=True)
    assert seqs(sight_machine) == [0, 1, 2, 3, 4]


def test_credentials_come_from_the_environment_when_the_config_omits_them() -> None:
    entry = {"transmit_name": "cloud", "transmit_type": "remotedatapost", "API_key_ID": "edge"}
    doc = {"data_receiver": [], "transforms": [], "data_transmit": [entry]}
    environ = {"SIGHT_MACHINE_BASE_URL": "https://plant.example", "SIGHT_MACHINE_API_KEY": "k",
               "SIGHT_MACHINE_API_KEY_ID": "ignored: the config sets it"}
    config = load(doc, runnable=False, environ=environ).data_transmit[0]
    assert (config.base_url, config.API_key, config.API_key_ID) == ("https://plant.example", "k", "edge")
    missing = validate(doc, environ={})
    assert [(v.json_path, v.level) for v in missing] == [
        (["data_transmit", 0, "base_url"], "warning"), (["data_transmit", 0, "API_key"], "warning")]
    assert "transmit 'cloud' has no base_url" in missing[0].description
    assert "SIGHT_MACHINE_BASE_URL" in missing[0].description
    with pytest.raises(ConfigError) as info:
        load({**doc, "data_receiver": [{"data_receiver_name": "f", "protocol": "localfile",
                                        "connections": [{"data_directory": "/in"}],
                                        "parsers": [{"parser_name": "c", "parser_type": "csv"}],
                                        "streams": [{"asset": "a", "stream_type": "s", "parser": "c",
                                                     "file_filter": ["*"]}]}]}, environ={})
    assert [(v.json_path, v.level) for v in info.value.violations] == [
        (["data_transmit", 0, "base_url"], "error"), (["data_transmit", 0, "API_key"], "error")]
    bad = validate({**doc, "data_transmit": [{**entry, "base_url": "plant.example",
                                              "max_request_size_bytes": 5_000_000}]}, environ=environ)
    assert [(v.json_path, v.level) for v in bad] == [
        (["data_transmit", 0, "max_request_size_bytes"], "error")]
    bad = validate({**doc, "data_transmit": [{**entry, "base_url": "plant.example"}]}, environ=environ)
    assert [(v.json_path, v.level) for v in bad] == [(["data_transmit", 0, "base_url"], "error")]


def test_a_full_outbox_makes_write_batch_wait_not_drop(tmp_path: Path,
                                                      sight_machine: SightMachineSimulator) -> None:
    sight_machine.mode = "503"
    config = rdp(sight_machine.transmit(outbox_max_bytes=4 * 1024 * 1024, poll_interval=0))
    partition = sink_partition(config, RunContext(home=tmp_path))
    n = 60_000
    frame = pl.DataFrame({"timestamp": [datetime(2024, 1, 1, tzinfo=UTC)] * n, "seq": list(range(n))})
    partition.write_batch([Batch("r", STREAM, frame, "q")])  # an empty outbox takes any batch
    outbox = Outbox(tmp_path / "components" / "sight_machine" / "outbox.sqlite")
    records, size = outbox.depth()
    assert records == n and size > 4 * 1024 * 1024
    second = threading.Thread(target=partition.write_batch,
                              args=([Batch("r", STREAM, frame.with_columns(pl.col("seq") + n), "q")],))
    second.start()
    time.sleep(1.5)
    assert second.is_alive() and outbox.depth()[0] == n  # waiting, not dropping
    sight_machine.mode = "ok"
    second.join(60)
    assert not second.is_alive()
    deadline = time.monotonic() + 60
    while outbox.depth()[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    partition.close()
    assert seqs(sight_machine) == list(range(2 * n))
    assert Ledger(ledger_path(tmp_path)).progress("sight_machine", str(STREAM))[0] == 2 * n


def nab_flow_config(directory: Path, sim: SightMachineSimulator) -> dict[str, Any]:
    return {"data_receiver": [{"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 0.5,
                               "connections": [{"data_directory": str(directory)}],
                               "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                               "streams": [{"asset": "nab", "stream_type": "machine_temperature",
                                            "parser": "csv",
                                            "file_filter": ["machine_temperature_system_failure.csv"]}]}],
            "transforms": [], "data_transmit": [sim.transmit()]}


def test_outbox_survives_sigkill_of_the_dataflow(tmp_path: Path, nab_machine_csv: Path, flows: Any,
                                                 sight_machine: SightMachineSimulator) -> None:
    sight_machine.mode = "503"
    flow = flows(tmp_path / "home", nab_flow_config(nab_machine_csv.parent, sight_machine))
    flow.start()
    ledger = Ledger(ledger_path(flow.home))
    flow.wait_for(lambda: (ledger.transmit_status("sight_machine").outbox_records or 0) >= NAB_ROWS,
                  what="every NAB row in the outbox")
    flow.kill()
    assert sight_machine.sslogs == []
    assert Outbox(flow.home / "components" / "sight_machine" / "outbox.sqlite").depth()[0] >= NAB_ROWS
    sight_machine.mode = "ok"
    flow.start()
    flow.wait_for(lambda: len(sight_machine.sslogs) >= NAB_ROWS
                  and ledger.transmit_status("sight_machine").outbox_records == 0, what="delivery")
    assert flow.stop(signal.SIGTERM) == 0
    received = Counter((s["timestamp"], s["fieldvalues"]["value"]["value"]) for s in sight_machine.sslogs)
    lines = nab_machine_csv.read_text().splitlines()[1:]
    expected = Counter((f"{t.replace(' ', 'T')}.000000", float(v)) for t, v in (ln.split(",") for ln in lines))
    assert set(received) == set(expected)  # none missing, none invented
    duplicates = sum(received.values()) - sum(expected.values())
    assert duplicates >= 0
    print(f"outbox after SIGKILL: {sum(received.values())} sslogs received, {duplicates} duplicates")


@transmit_harness
class RemoteDataPostHarness(TransmitHarness):
    """The Sight Machine simulator, and the transmit's outbox for what is not posted yet."""

    transmit_type = "remotedatapost"

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.simulator: SightMachineSimulator = request.getfixturevalue("sight_machine")

    def transmit(self, home: Path) -> dict[str, Any]:
        return {**self.simulator.transmit(), "transmit_name": "conformance", "poll_interval": 0.2}

    def durable_seqs(self, home: Path, expected: int) -> list[int]:
        # the outbox first: a record posted meanwhile is then on the simulator, never missed
        outbox = Outbox(home / "components" / "conformance" / "outbox.sqlite")
        try:
            stored = [bson.decode(e.body)["fieldvalues"]["seq"]["value"]
                      for e in outbox.peek(1_000_000, 1 << 40)]
        finally:
            outbox.close()
        return seqs(self.simulator) + stored


def test_a_stop_does_not_hang_on_a_full_outbox_of_a_paused_transmit(tmp_path: Path,
                                                                    sight_machine: SightMachineSimulator) -> None:
    ctx = RunContext(home=tmp_path)
    config = rdp(sight_machine.transmit(API_key="revoked", outbox_max_bytes=4 * 1024 * 1024,
                                        poll_interval=0))  # the endpoint answers 401
    partition = sink_partition(config, ctx)
    n = 60_000
    frame = pl.DataFrame({"timestamp": [datetime(2024, 1, 1, tzinfo=UTC)] * n, "seq": list(range(n))})
    partition.write_batch([Batch("r", STREAM, frame, "q")])  # fills the budget; the endpoint says 401
    second = threading.Thread(target=partition.write_batch,
                              args=([Batch("r", STREAM, frame.with_columns(pl.col("seq") + n), "q")],))
    second.start()
    time.sleep(1.0)
    assert second.is_alive()  # waiting for room that a paused transmit never makes
    stopped_at = time.monotonic()
    ctx.shutdown.set()  # SIGTERM
    second.join(10)
    partition.close()
    assert not second.is_alive() and time.monotonic() - stopped_at < 5
    outbox = Outbox(tmp_path / "components" / "sight_machine" / "outbox.sqlite")
    assert outbox.depth()[0] == 2 * n  # stored over the budget, nothing dropped
    assert Ledger(ledger_path(tmp_path)).transmit_status("sight_machine").paused


def test_a_drained_outbox_gives_its_disk_space_back(tmp_path: Path,
                                                    sight_machine: SightMachineSimulator) -> None:
    sender = make_sender(tmp_path, rdp(sight_machine.transmit(max_request_records=20_000)))
    for start in range(0, 200_000, 20_000):
        fill(sender, 20_000, start=start)
    full = sender.outbox.disk_bytes()
    assert full > 20_000_000
    while sender.send_once(force=True):
        pass
    assert sender.outbox.depth() == (0, 0) and len(sight_machine.sslogs) == 200_000
    assert sender.outbox.disk_bytes() < 1024 * 1024, (full, sender.outbox.disk_bytes())
