"""The machinemetrics receiver against the MachineMetrics simulator (``tests/simulators/machinemetrics.py``)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.receivers.machinemetrics import iso
from dataflows.testing import Clock, StreamDriver
from tests.connectors.conformance import ReceiverHarness, receiver_harness
from tests.simulators.machinemetrics import MACHINES, MachineMetricsSimulator, parse

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "machinemetrics"
M1, M2, M3 = MACHINES
T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def mm() -> Iterator[MachineMetricsSimulator]:
    with MachineMetricsSimulator() as simulator:
        yield simulator


def _spec_example(mm: MachineMetricsSimulator, query: str, tmp_path: Path) -> list[dict[str, Any]]:
    """The document's example for ``query`` read through the receiver: its rows."""
    example = json.loads((FIXTURES / f"{query}.json").read_text())
    sent = example["request"]
    start, end = parse(sent["start"], "start"), parse(sent["end"], "end")
    mm.canned[(query, example["response"]["range"]["start"], example["response"]["range"]["end"])] = \
        example["response"]
    stream = {"asset": "cell", "stream_type": query, "query": query, "window": int((end - start).total_seconds()),
              "initial_value": sent["start"], "group_by": [g["group"] for g in sent["groupBy"]],
              "filter": sent["filter"]}
    if query == "production":
        stream["metrics"] = [d["metric"] for d in sent["data"]]
    p = StreamDriver.of(mm.receiver([stream]), tmp_path, clock=Clock(end + timedelta(minutes=1)))
    (frame,) = p.frames()
    assert mm.queries == [(query, sent)]  # the document's request, as the document writes it
    assert p.frames() == []  # the next window has not elapsed
    p.close()
    return frame.to_dicts()


def _t(text: str) -> datetime:
    return parse(text, "t")


def test_the_documents_production_example_flattens_into_exact_rows(mm: MachineMetricsSimulator,
                                                                   tmp_path: Path) -> None:
    start, end = _t("2017-07-19T10:00:00Z"), _t("2017-07-21T10:00:00Z")
    days = [(_t("2017-07-19T10:00:00Z"), _t("2017-07-20T10:00:00Z"), _t("2017-07-19T04:00:00Z")),
            (_t("2017-07-20T10:00:00Z"), _t("2017-07-21T10:00:00Z"), _t("2017-07-20T04:00:00Z"))]
    expected = [
        (0, "MACHINE 3", M3, 0, 9971), (0, "MACHINE 1", M1, 3425, 80549950), (0, "MACHINE 2", M2, 870, 65801315),
        (1, "MACHINE 3", M3, 978, 19536320), (1, "MACHINE 1", M1, 2741, 64656182),
        (1, "MACHINE 2", M2, 810, 60514662)]
    assert _spec_example(mm, "production", tmp_path) == [
        {"timestamp": days[d][0], "start": start, "end": end, "day_id": str(d), "day_start": days[d][0],
         "day_end": days[d][1], "day_shopDate": days[d][2], "machine": name, "machine_id": ident,
         "totalParts": parts, "timeInCycle": cycle} for d, name, ident, parts, cycle in expected]


@pytest.mark.parametrize(("query", "figure", "expected"), [
    ("downtime", "downtimeMs", [("Chipping Out", "33", "MACHINE 1", M1, 544259, 2),
                                ("Chipping Out", "33", "MACHINE 2", M2, 837607, 1),
                                ("Chipping Out", "33", "MACHINE 3", M3, 350032, 1),
                                ("Part Changeover", "95", "MACHINE 3", M3, 5912801, 4)]),
    ("quality", "rejectCount", [("Chip Impressions", "24", "MACHINE 1", M1, 15, 5),
                                ("Chip Impressions", "24", "MACHINE 2", M2, 10, 5),
                                ("Burrs", "37", "MACHINE 2", M2, 79, 53),
                                ("Burrs", "37", "MACHINE 3", M3, 46, 12)])])
def test_the_documents_downtime_and_quality_examples_flatten_into_exact_rows(
        mm: MachineMetricsSimulator, tmp_path: Path, query: str, figure: str,
        expected: list[tuple[Any, ...]]) -> None:
    start, end = _t("2017-07-19T10:00:00Z"), _t("2017-08-19T10:00:00Z")
    assert _spec_example(mm, query, tmp_path) == [
        {"timestamp": start, "start": start, "end": end, "reason": reason, "reason_id": reason_id,
         "machine": machine, "machine_id": machine_id, figure: value, "recordCount": count}
        for reason, reason_id, machine, machine_id, value, count in expected]


def test_windows_are_asked_for_once_they_have_elapsed(mm: MachineMetricsSimulator, tmp_path: Path) -> None:
    stream = {"asset": "cell", "stream_type": "p", "query": "production", "metrics": ["totalParts"],
              "window": 600, "initial_value": iso(T0), "delay": 60}
    clock = Clock(T0 + timedelta(seconds=1850))  # three windows and 50 s: the third has not settled
    p = StreamDriver.of(mm.receiver([stream]), tmp_path, clock=clock)
    frames = p.frames() + p.frames()
    assert [f["start"].to_list() for f in frames] == [[T0], [T0 + timedelta(seconds=600)]]
    assert frames[0]["totalParts"].to_list() == [mm.plant("production", T0, T0 + timedelta(seconds=600), {
        "data": [{"metric": "totalParts"}]})["aggregate"]["totalParts"]]
    assert p.frames() == []
    clock.now = T0 + timedelta(seconds=1860)  # the third window's end plus the delay
    (third,) = p.frames()
    assert third["end"].to_list() == [T0 + timedelta(seconds=1800)]
    assert p.snapshot().reader == iso(T0 + timedelta(seconds=1800))
    assert [(q["start"], q["end"]) for _, q in mm.queries] == [
        (iso(T0 + timedelta(seconds=600 * k)), iso(T0 + timedelta(seconds=600 * (k + 1)))) for k in range(3)]
    p.close()


def test_windows_start_on_whole_seconds(mm: MachineMetricsSimulator, tmp_path: Path) -> None:
    stream = {"asset": "cell", "stream_type": "p", "query": "quality", "window": 60,
              "initial_value": "2026-03-01T00:00:00.700+01:00"}  # an offset and a fraction
    p = StreamDriver.of(mm.receiver([stream]), tmp_path, clock=Clock(T0 + timedelta(minutes=5)))
    p.frames()
    assert mm.queries[0][1]["start"] == "2026-02-28T23:00:00Z"
    assert p.snapshot().reader == "2026-02-28T23:01:00Z"  # the state keeps what the queries use
    p.close()


def test_a_first_run_without_initial_value_starts_at_the_current_window(mm: MachineMetricsSimulator,
                                                                        tmp_path: Path) -> None:
    stream = {"asset": "cell", "stream_type": "d", "query": "downtime", "group_by": ["reason"], "window": 3600}
    clock = Clock(T0 + timedelta(minutes=30))
    p = StreamDriver.of(mm.receiver([stream]), tmp_path, clock=clock)
    assert p.frames() == []
    clock.now = T0 + timedelta(hours=1)
    (frame,) = p.frames()
    assert frame["reason"].to_list() == ["Chipping Out", "Part Changeover", "Setup"]
    assert set(frame["start"].to_list()) == {T0}
    p.close()


@pytest.mark.parametrize(("switch", "message"), [
    ("api_key", "HTTP 401 invalid_token: Invalid token: access token is invalid (check api_key)"),
    ("forbidden", "HTTP 403 insufficient_scope: The request requires higher privileges than provided by "
                  "the access token (the API key may not read reports)"),
    ("base_url", "HTTP 404 not_found: Cannot POST /v2/reports/quality (check base_url)"),
    ("outage", "HTTP 503 service_unavailable: The service is temporarily unavailable"),
])
def test_errors_are_markers_with_the_apis_error(mm: MachineMetricsSimulator, tmp_path: Path, switch: str,
                                                message: str) -> None:
    stream = {"asset": "cell", "stream_type": "q", "query": "quality", "window": 600, "initial_value": iso(T0)}
    entry = mm.receiver([stream])
    if switch == "api_key":
        entry["api_key"] = "wrong"
    if switch == "base_url":  # a path the API does not serve
        entry["base_url"] = mm.base_url + "/v2"
    mm.forbidden = switch == "forbidden"
    mm.switches.outage = switch == "outage"
    p = StreamDriver.of(entry, tmp_path, clock=Clock(T0 + timedelta(hours=1)))
    assert p.frames() == []
    (marker,) = p.markers()
    assert marker.level == "error" and marker.category == "machinemetrics"
    assert marker.message.startswith("MachineMetrics query failed: POST ")
    assert message in marker.message
    assert p.snapshot().reader == iso(T0)  # the state did not move
    p.close()


def test_429_backs_off_and_loses_no_window(mm: MachineMetricsSimulator, tmp_path: Path) -> None:
    stream = {"asset": "cell", "stream_type": "p", "query": "production", "metrics": ["totalParts"],
              "group_by": ["machine"], "window": 600, "initial_value": iso(T0)}
    clock = Clock(T0 + timedelta(seconds=1200))
    p = StreamDriver.of(mm.receiver([stream]), tmp_path, clock=clock)
    mm.throttle = 2
    waits = []
    for _ in range(2):
        before = clock.now
        assert p.next_batch() == []
        waits.append((p.next_poll - before).total_seconds())
        assert "HTTP 429 rate_limit_exceeded" in p.markers()[0].message
        clock.now = p.next_poll
    assert 1.0 <= waits[0] < 1.5 and 2.0 <= waits[1] < 3.0, waits  # backoff: 1 s, then 2 s, with jitter
    frames = p.frames() + p.frames()
    assert [f["start"].to_list() for f in frames] == [[T0] * 3, [T0 + timedelta(seconds=600)] * 3]
    assert p.markers() == []
    p.close()


def test_window_arithmetic_across_sigkill_and_restart(mm: MachineMetricsSimulator, tmp_path: Path,
                                                      flows: Any) -> None:
    windows = 300
    first = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=windows)
    mm.switches.slow_seconds = 0.03
    stream = {"asset": "cell", "stream_type": "production", "query": "production",
              "metrics": ["totalParts", "timeInCycle"], "group_by": ["machine"], "window": 60,
              "initial_value": iso(first)}
    config = {"data_receiver": [mm.receiver([stream], poll_interval=1)], "transforms": [],
              "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}]}
    flow = flows(tmp_path / "home", config)
    out = "cell__production.jsonl"
    flow.start()
    flow.wait_for(lambda: len(flow.output("local", out)) >= windows * 3 // 2, what="half the windows")
    flow.kill()
    at_kill = len(flow.output("local", out))
    asked_at_kill = len(mm.queries)
    flow.start()
    flow.wait_for(lambda: len(flow.output("local", out)) >= windows * 3, what="every window")
    assert flow.stop() == 0
    rows = flow.output("local", out)
    starts = Counter(r["start"] for r in rows)
    last = max(_t(s) for s in starts)
    n = int((last - first).total_seconds() // 60) + 1
    assert set(starts) == {iso(first + timedelta(minutes=k)) for k in range(n)}  # none skipped
    assert set(starts.values()) == {3}  # none twice: three machines a window
    asked = Counter(q["start"] for _, q in mm.queries)
    twice = sum(c - 1 for c in asked.values())
    print(f"machinemetrics: {n} windows of 60 s; SIGKILL with {at_kill} rows written after {asked_at_kill} "
          f"queries; after the restart {len(rows)} rows, each window's 3 machines once; "
          f"{twice} windows asked for again (their rows were not yet committed at the kill)")


def test_the_plant_model_adds_up(mm: MachineMetricsSimulator) -> None:
    answer = mm.plant("downtime", T0, T0 + timedelta(days=2), {"groupBy": [{"group": "day"}, {"group": "machine"}]})
    assert answer["aggregate"]["downtimeMs"] == sum(i["aggregate"]["downtimeMs"] for i in answer["items"])
    day = answer["items"][1]
    assert day["aggregate"]["recordCount"] == sum(i["aggregate"]["recordCount"] for i in day["items"])
    assert answer["entities"]["day"]["1"]["start"] == "2026-03-02T00:00:00.000Z"


@receiver_harness
class MachineMetricsHarness(ReceiverHarness):
    """Rollups whose windows take the added ``seq`` values, one group each; the answer of a
    window never changes once given, as a settled window's rollup does not. Bad input is an
    outage."""

    protocol = "machinemetrics"

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.mm = MachineMetricsSimulator().start()
        self.pending: list[int] = []
        self.given: dict[str, dict[str, Any]] = {}
        self.mm.answer = self.answer

    def answer(self, query: str, start: datetime, end: datetime, body: dict[str, Any]) -> dict[str, Any]:
        if iso(start) not in self.given:
            seqs, self.pending = self.pending, []
            self.given[iso(start)] = {
                "range": {"start": iso(start), "end": iso(end)}, "aggregate": {"seq": sum(seqs)},
                "entities": {"machine": {str(s): {"id": str(s), "name": f"M{s}"} for s in seqs}},
                "items": [{"entity": {"type": "machine", "id": str(s)}, "aggregate": {"seq": s}} for s in seqs]}
        return self.given[iso(start)]

    def receiver(self) -> dict[str, Any]:
        start = datetime.now(UTC).replace(microsecond=0)  # the suite's clock starts an hour ahead
        return self.mm.receiver([{"asset": "conformance", "stream_type": "test", "query": "production",
                                  "metrics": ["seq"], "group_by": ["machine"], "window": 1,
                                  "initial_value": iso(start + timedelta(minutes=59, seconds=58))}],
                                data_receiver_name="conformance")

    def add(self, seqs: range) -> None:
        self.pending.extend(seqs)

    def break_input(self) -> None:
        self.mm.switches.outage = True

    def heal(self) -> None:
        self.mm.switches.outage = False

    def close(self) -> None:
        self.mm.stop()
