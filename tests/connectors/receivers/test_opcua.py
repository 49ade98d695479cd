"""The opcua receiver against asyncua's server (``tests/services/opcua.py``), started in the
test on a free loopback port, and against node-opcua's sample server (npm)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from dataflows.outbox import Outbox
from dataflows.records import Batch
from dataflows.runtime import PartitionState
from dataflows.sdk import RunContext
from dataflows.testing import TRANSMIT, StreamDriver, load_receiver, store_once
from dataflows.testing import markers as ledger_markers
from tests.connectors.conformance import ReceiverHarness, receiver_harness
from tests.services.opcua import PASSWORD, USER, AsyncuaServer, node_opcua_sample_server

ROOT = Path(__file__).resolve().parents[3]


_OPEN: list[Live] = []


@pytest.fixture
def server() -> Iterator[AsyncuaServer]:
    with AsyncuaServer() as running:
        yield running
        while _OPEN:  # streams a failed test left open, closed before their server stops
            _OPEN[0].close()


def receiver(url: str, tags: list[dict[str, Any]], mode: str = "poll", **keys: Any) -> dict[str, Any]:
    connection = {"endpoint": url, "timeout": 2, **keys.pop("connection", {})}
    return {"data_receiver_name": "plc", "protocol": "opcua", "poll_interval": keys.pop("poll_interval", 0.2),
            "mode": mode, "connections": [connection], **keys,
            "streams": [{"asset": "line1", "stream_type": "tags", "opcua_tags": tags}]}


def tag(name: str, export: str | None = None) -> dict[str, Any]:
    """A tag of the test server's Line1 folder, by NodeId."""
    return {"name": f"ns=2;s=Line1.{name}", "exportname": export or name}


class Live(StreamDriver):
    """One stream through the runtime's partition, on the real clock."""

    def __init__(self, entry: dict[str, Any], home: Path, state: Any = None) -> None:
        super().__init__(load_receiver(entry), RunContext(home=home), state)
        self.frames: list[pl.DataFrame] = []
        self.batches: list[Batch] = []
        self.seen_markers: list[Any] = []
        _OPEN.append(self)

    def step(self) -> list[pl.DataFrame]:
        """One ``next_batch``, after sleeping until the partition's ``next_awake``."""
        self.sleep_until_awake()
        batches = self.next_batch()
        self.batches += batches
        frames = [b.frame for b in batches]
        self.frames += frames
        self.seen_markers += [m for m in self.markers() if m not in self.seen_markers]
        return frames

    def until(self, done: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"gave up; frames {self.frames}, markers {self.markers()}"
            self.step()

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step()

    def rows(self) -> list[dict[str, Any]]:
        return [row for frame in self.frames for row in frame.to_dicts()]

    def markers(self) -> list[Any]:
        return ledger_markers(self.ctx.home)

    def close(self) -> None:
        if self in _OPEN:
            _OPEN.remove(self)
            super().close()


# --------------------------------------------------------------------------- poll


def test_poll_reads_every_type_into_one_record_per_poll(server: AsyncuaServer, tmp_path: Path) -> None:
    names = ["Running", "Mode", "Level", "Temp16", "Count16", "Delta", "Count", "Energy", "Total",
             "Ratio", "Temperature", "Recipe", "LastCycle", "Barcode", "Label", "Profile", "Alarms", "Names",
             "BatchId", "Source", "Kind", "Health", "Layout", "Grid"]
    live = Live(receiver(server.url, [tag(n) for n in names]), tmp_path)
    live.until(lambda: len(live.frames) >= 2)
    frame = live.frames[0]
    assert frame.height == 1  # one record per poll
    assert dict(frame.schema) == {
        "timestamp": pl.Datetime("us", "UTC"), "Running": pl.Boolean, "Mode": pl.Int8, "Level": pl.UInt8,
        "Temp16": pl.Int16, "Count16": pl.UInt16, "Delta": pl.Int32, "Count": pl.UInt32, "Energy": pl.Int64,
        "Total": pl.UInt64, "Ratio": pl.Float32, "Temperature": pl.Float64, "Recipe": pl.String,
        "LastCycle": pl.Datetime("us", "UTC"), "Barcode": pl.Binary, "Label": pl.String,
        "Profile": pl.List(pl.Float64), "Alarms": pl.List(pl.Boolean), "Names": pl.List(pl.String),
        "BatchId": pl.String, "Source": pl.String, "Kind": pl.String, "Health": pl.String, "Layout": pl.String,
        "Grid": pl.List(pl.List(pl.Int32))}
    row = frame.drop("timestamp").row(0, named=True)
    assert row == {
        "Running": True, "Mode": -3, "Level": 200, "Temp16": -12, "Count16": 65000, "Delta": -70000,
        "Count": 4_000_000_000, "Energy": -(2**40), "Total": 2**63 + 5, "Ratio": 0.5, "Temperature": 21.25,
        "Recipe": "PX-7 ä", "LastCycle": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "Barcode": b"\x00\x01\xff", "Label": "Presse 1", "Profile": [1.5, 2.5, 3.5], "Alarms": [True, False],
        "Names": ["a", "b"], "BatchId": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
        "Source": "ns=2;s=Line1.Temperature", "Kind": "2:Press", "Health": "BadTimeout", "Layout": "<line id='1'/>",
        "Grid": [[1, 2], [3, 4]]}
    assert live.markers() == []
    live.close()


def test_poll_makes_one_read_per_poll_stamped_with_the_newest_source_timestamp(
        server: AsyncuaServer, tmp_path: Path) -> None:
    seq = server.take_reads("Seq")  # each Read of Seq takes the next value
    old = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    server.write("Temperature", 20.0, source_timestamp=old)
    seq.extend(range(5))
    live = Live(receiver(server.url, [tag("Seq", "seq"), tag("Temperature", "t")]), tmp_path)
    live.until(lambda: sum(f.height for f in live.frames) >= 6)
    rows = live.rows()
    assert [r["seq"] for r in rows[:5]] == [0, 1, 2, 3, 4]  # one Read per poll: no value skipped
    assert all(r["t"] == 20.0 for r in rows)
    assert all(r["timestamp"] > old for r in rows)  # Seq's source timestamp is the newest
    server.write("Temperature", 22.5, source_timestamp=datetime.now(UTC) + timedelta(hours=1))
    live.until(lambda: live.rows()[-1]["t"] == 22.5)
    assert live.rows()[-1]["timestamp"] > datetime.now(UTC) + timedelta(minutes=59)
    live.close()


def test_poll_on_change_sends_only_changes_and_keeps_the_last_values_across_a_restart(
        server: AsyncuaServer, tmp_path: Path) -> None:
    entry = receiver(server.url, [tag("Temperature", "t"), tag("Running", "r")], on_change=True)
    live = Live(entry, tmp_path)
    live.until(lambda: len(live.frames) == 1)
    live.run_for(1.0)
    assert len(live.frames) == 1  # unchanged polls send nothing
    server.write("Temperature", 23.0)
    live.until(lambda: len(live.frames) == 2)
    state = live.snapshot()
    live.close()
    again = Live(entry, tmp_path, state)
    again.run_for(1.0)
    assert again.frames == []  # the first poll after the restart is unchanged: not sent twice
    server.write("Running", False)
    again.until(lambda: len(again.frames) == 1)
    assert again.rows()[0] | {"timestamp": None} == {"timestamp": None, "t": 23.0, "r": False}
    again.close()


def test_namespace_search_and_browse_paths_find_nodes(server: AsyncuaServer, tmp_path: Path) -> None:
    tags = [{"name": "Line1.Count", "exportname": "count"},  # FactoryTX style, no namespace_index
            {"name": "Line1.Delta", "exportname": "delta", "namespace_index": 2},
            {"name": "/Objects/2:Line1/2:Temperature", "exportname": "t"}]
    live = Live(receiver(server.url, tags), tmp_path)
    live.until(lambda: len(live.frames) >= 1)
    assert live.rows()[0] | {"timestamp": None} == {"timestamp": None, "count": 4_000_000_000,
                                                    "delta": -70000, "t": 21.25}
    live.close()


def test_a_missing_node_marks_the_stream_with_its_node_id_and_the_other_tags_go_on(
        server: AsyncuaServer, tmp_path: Path) -> None:
    tags = [tag("Temperature", "t"), tag("NoSuchTag", "gone"), {"name": "/Objects/2:Line1/2:Nope", "exportname": "p"},
            {"name": "Nowhere.Tag", "exportname": "n"}]
    live = Live(receiver(server.url, tags), tmp_path)
    live.until(lambda: len(live.frames) >= 2)
    assert live.rows()[-1] | {"timestamp": None} == {"timestamp": None, "t": 21.25, "gone": None,
                                                     "p": None, "n": None}
    messages = {m.message for m in live.seen_markers if m.category == "input" and m.level == "error"}
    assert ("tag 'gone' (ns=2;s=Line1.NoSuchTag): BadNodeIdUnknown: The node id refers to a node that does not "
            "exist in the server address space.") in messages
    # a node deleted while the stream runs
    server.delete("Temperature")
    live.until(lambda: live.rows()[-1]["t"] is None)
    live.run_for(0.5)
    assert any(m.message.startswith("tag 't' (ns=2;s=Line1.Temperature): BadNodeIdUnknown") for m in live.seen_markers)
    live.close()


def test_a_bad_status_is_null_and_a_value_of_another_type_is_not_coerced(
        server: AsyncuaServer, tmp_path: Path) -> None:
    from asyncua import ua

    values = server.take_reads("Any")  # each Read takes the next DataValue: any type
    values.append(ua.DataValue(ua.Variant(20.5, ua.VariantType.Double)))
    live = Live(receiver(server.url, [tag("Any", "t"), tag("Running", "r")]), tmp_path)
    live.until(lambda: len(live.frames) >= 1)
    values.append(ua.DataValue(ua.Variant(99.0, ua.VariantType.Double),
                               StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure)))
    live.until(lambda: live.rows()[-1]["t"] is None)
    assert live.rows()[-1]["r"] is True
    values.append(ua.DataValue(ua.Variant("hot", ua.VariantType.String)))
    live.until(lambda: any("String" in m.message for m in live.seen_markers))
    assert live.rows()[-1]["t"] is None and live.frames[-1].schema["t"] == pl.Float64
    messages = [m.message for m in live.seen_markers if m.category == "input"]
    assert "tag 't' (ns=2;s=Line1.Any): BadSensorFailure" in messages
    assert "tag 't' (ns=2;s=Line1.Any): a String value, not Float64; sent as null" in messages
    values.append(ua.DataValue(ua.Variant(30.0, ua.VariantType.Double)))
    live.until(lambda: live.rows()[-1]["t"] == 30.0)
    live.close()


# --------------------------------------------------------------------------- subscribe


def test_subscribe_sends_one_record_per_data_change(server: AsyncuaServer, tmp_path: Path) -> None:
    from asyncua import ua

    entry = receiver(server.url, [tag("Temperature", "t"), tag("Recipe", "recipe")], mode="subscribe",
                     poll_interval=0.5, publishing_interval=0.1, sampling_interval=0)
    live = Live(entry, tmp_path)
    live.until(lambda: len(live.rows()) >= 2)  # the initial value of each tag
    stamps = [datetime(2026, 5, 1, 12, 0, s, tzinfo=UTC) for s in range(4)]
    for n, stamp in enumerate(stamps[:3]):
        server.write("Temperature", 30.0 + n, source_timestamp=stamp)
    server.write("Recipe", "PX-8", source_timestamp=stamps[3])
    server.write("Temperature", -1.0, status=ua.StatusCodes.BadOutOfService, source_timestamp=stamps[3])
    live.until(lambda: len(live.rows()) >= 7)
    changes = [r for r in live.rows() if r["timestamp"].year == 2026 and r["timestamp"].month == 5]
    temperature = [(r["timestamp"], r["status_code"], r["t"]) for r in changes if r["recipe"] is None]
    assert temperature == [(stamps[0], "Good", 30.0), (stamps[1], "Good", 31.0), (stamps[2], "Good", 32.0),
                           (stamps[3], "BadOutOfService", None)]  # in order, each change a record
    assert [(r["timestamp"], r["t"], r["recipe"]) for r in changes if r["recipe"]] == [(stamps[3], None, "PX-8")]
    assert all(r["server_timestamp"] > stamps[3] for r in changes)
    frame = next(f for f in live.frames if f.height > 1)  # changes between polls batched into one frame
    assert frame.columns == ["timestamp", "server_timestamp", "status_code", "backfill", "t", "recipe"]
    assert not frame["backfill"].any()  # live changes
    assert any(m.message == "tag 't' (ns=2;s=Line1.Temperature): BadOutOfService" for m in live.seen_markers)
    live.close()


def test_subscribe_state_sends_nothing_twice_after_a_restart(server: AsyncuaServer, tmp_path: Path) -> None:
    entry = receiver(server.url, [tag("Temperature", "t"), tag("Mode", "m")], mode="subscribe",
                     publishing_interval=0.1)
    live = Live(entry, tmp_path)
    server.write("Temperature", 40.0)
    live.until(lambda: any(r["t"] == 40.0 for r in live.rows()))
    state = live.snapshot()
    assert isinstance(state, PartitionState) and set(state.reader["source_timestamps"]) == {"t", "m"}
    live.close()
    again = Live(entry, tmp_path, state)
    again.run_for(1.5)
    assert again.rows() == []  # the new subscription's initial values were sent before
    server.write("Temperature", 41.0)
    again.until(lambda: len(again.rows()) == 1)
    assert again.rows()[0]["t"] == 41.0
    again.close()


def test_subscribe_changes_sent_again_after_a_crash_are_known_by_tag_and_source_timestamp(
        server: AsyncuaServer, tmp_path: Path) -> None:
    """Resumed from a snapshot older than the last change sent (a crash), the new
    subscription's first notification is that change again: its position (tag, source
    timestamp) tells an outbox it stored it already; a new change is stored."""
    entry = receiver(server.url, [tag("Temperature", "t"), tag("Mode", "m")], mode="subscribe",
                     publishing_interval=0.1)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.keep_positions("recovery-1")

    def store(batches: list[Batch]) -> list[Any]:
        return [v for b in store_once(outbox, batches) for v in b.frame["t"].to_list() if v is not None]

    live = Live(entry, tmp_path)
    live.until(lambda: len(live.rows()) >= 2)  # each tag's initial value
    older = live.snapshot()
    server.write("Temperature", 40.0, source_timestamp=datetime(2026, 6, 1, tzinfo=UTC))
    live.until(lambda: any(r["t"] == 40.0 for r in live.rows()))
    assert 40.0 in store(live.batches)
    assert all(b.position is not None and b.position.scoped for b in live.batches)
    live.close()
    again = Live(entry, tmp_path, older)
    again.until(lambda: any(r["t"] == 40.0 for r in again.rows()))  # the reader sends it again ...
    assert store(again.batches) == []  # ... and it is not stored twice
    server.write("Temperature", 41.0, source_timestamp=datetime(2026, 6, 1, 0, 0, 1, tzinfo=UTC))
    again.until(lambda: any(r["t"] == 41.0 for r in again.rows()))
    assert store(again.batches) == [41.0]
    again.close()
    outbox.close()


def test_subscribe_a_missing_node_is_marked_and_the_others_are_subscribed(
        server: AsyncuaServer, tmp_path: Path) -> None:
    entry = receiver(server.url, [tag("Temperature", "t"), tag("NoSuchTag", "gone")], mode="subscribe",
                     publishing_interval=0.1)
    live = Live(entry, tmp_path)
    live.until(lambda: any(r["t"] == 21.25 for r in live.rows()))
    server.write("Temperature", 25.0)
    live.until(lambda: any(r["t"] == 25.0 for r in live.rows()))
    (marker,) = [m for m in live.seen_markers if m.category == "input"]
    assert marker.message == ("tag 'gone' (ns=2;s=Line1.NoSuchTag): BadNodeIdUnknown: The node id refers to a node "
                              "that does not exist in the server address space.")
    live.close()


def test_changes_waiting_for_the_dataflow_are_bounded(server: AsyncuaServer, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors import _opcua_feed

    monkeypatch.setattr(_opcua_feed, "MAX_BUFFERED_CHANGES", 5)
    entry = receiver(server.url, [tag("Temperature", "t")], mode="subscribe", publishing_interval=0.1,
                     sampling_interval=0)
    live = Live(entry, tmp_path)
    live.until(lambda: len(live.rows()) == 1)
    for n in range(20):  # nobody takes them meanwhile
        server.write("Temperature", float(n), source_timestamp=datetime(2026, 6, 1, tzinfo=UTC) + timedelta(seconds=n))
    time.sleep(1.5)
    live.until(lambda: len(live.rows()) >= 6)
    live.run_for(0.5)
    assert [r["t"] for r in live.rows()[1:]] == [15.0, 16.0, 17.0, 18.0, 19.0]  # the newest kept
    (warning,) = [m for m in live.markers() if m.level == "warning"]
    assert warning.message == "15 data changes dropped: more than 5 waited for the dataflow"
    live.close()


# --------------------------------------------------------------------------- security


def test_sign_and_encrypt_with_a_user_and_a_trusted_server_certificate(tmp_path: Path) -> None:
    with AsyncuaServer(secure=True) as secure:
        connection = {"security_mode": "SignAndEncrypt", "security_policy": "Basic256Sha256",
                      "username": USER, "password": PASSWORD,
                      "server_certificate": str(secure.server_certificate)}
        live = Live(receiver(secure.url, [tag("Temperature", "t")], connection=connection), tmp_path / "a")
        live.until(lambda: len(live.frames) >= 1)
        assert live.rows()[0]["t"] == 21.25
        made = tmp_path / "a" / "components" / "plc" / "pki" / "client_certificate.der"
        assert made.exists()  # the self-signed client certificate the server must trust
        live.close()

        wrong = {**connection, "password": "not-the-password"}
        live = Live(receiver(secure.url, [tag("Temperature", "t")], connection=wrong), tmp_path / "b")
        live.until(lambda: any(m.category == "opcua" for m in live.markers()))
        (marker,) = [m for m in live.markers() if m.category == "opcua"]
        assert marker.level == "error" and secure.url in marker.message
        assert "BadUserAccessDenied" in marker.message or "BadIdentityToken" in marker.message
        assert live.frames == []
        live.close()

        anonymous = receiver(secure.url, [tag("Temperature", "t")])  # no security: the server refuses
        live = Live(anonymous, tmp_path / "c")
        live.until(lambda: any(m.category == "opcua" for m in live.markers()))
        assert live.frames == []
        live.close()


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
def test_the_stream_recovers_on_its_own_after_a_server_restart(server: AsyncuaServer, tmp_path: Path,
                                                               mode: str) -> None:
    entry = receiver(server.url, [tag("Temperature", "t")], mode=mode, poll_interval=0.5,
                     **({"publishing_interval": 0.2} if mode == "subscribe" else {}))
    live = Live(entry, tmp_path)
    server.write("Temperature", 50.0)
    live.until(lambda: any(r["t"] == 50.0 for r in live.rows()))
    server.stop()
    stopped = datetime.now(UTC)
    live.until(lambda: any(m.category == "opcua" for m in live.markers()), timeout=10)
    (marker,) = [m for m in live.markers() if m.category == "opcua"]
    assert marker.level == "error" and "connection lost" in marker.message and server.url in marker.message
    live.run_for(10 - (datetime.now(UTC) - stopped).total_seconds())  # 10 s without a server
    during = len(live.rows())
    assert [m for m in live.markers() if m.category == "opcua"]  # still marked
    server.start()
    server.write("Temperature", 51.0)
    live.until(lambda: any(r["t"] == 51.0 for r in live.rows()), timeout=30)
    assert len(live.rows()) > during
    live.until(lambda: not [m for m in live.markers() if m.category == "opcua"], timeout=10)  # cleared
    live.close()


def test_the_keep_alive_watchdog_notices_a_server_that_stops_answering(server: AsyncuaServer,
                                                                        tmp_path: Path) -> None:
    entry = receiver(server.url, [tag("Temperature", "t")], poll_interval=0.5,
                     connection={"timeout": 1, "watchdog_interval": 1})
    live = Live(entry, tmp_path)
    live.until(lambda: len(live.frames) >= 1)
    server.freeze(6)  # the TCP connection stays open; nothing is answered
    # a poll's own read may time out first ("no answer"); the watchdog then calls the connection lost
    live.until(lambda: any(m.category == "opcua" and "connection lost" in m.message for m in live.markers()),
               timeout=6)
    server.write("Temperature", 60.0)  # once the server answers again
    live.until(lambda: any(r["t"] == 60.0 for r in live.rows()), timeout=30)
    live.until(lambda: not [m for m in live.markers() if m.category == "opcua"], timeout=10)
    live.close()


def test_the_first_connection_is_retried_until_the_server_is_up(tmp_path: Path) -> None:
    server = AsyncuaServer()  # not started yet
    try:
        live = Live(receiver(server.url, [tag("Temperature", "t")]), tmp_path)
        live.until(lambda: any(m.category == "opcua" for m in live.markers()), timeout=10)
        (marker,) = [m for m in live.markers() if m.category == "opcua"]
        assert marker.message.startswith(f"OPC UA read failed: {server.url}: ")
        server.start()
        live.until(lambda: len(live.frames) >= 1, timeout=30)
        live.until(lambda: not [m for m in live.markers() if m.category == "opcua"], timeout=10)
        live.close()
    finally:
        server.close()


def test_retry_interval_sets_how_soon_a_stream_looks_again_at_a_connection_that_is_down(
        tmp_path: Path) -> None:
    server = AsyncuaServer()  # never started: nothing answers there
    waits = {}
    for retry in (None, 0.3):
        keys = {"poll_interval": 4} | ({"retry_interval": retry} if retry is not None else {})
        live = Live(receiver(server.url, [tag("Temperature", "t")], **keys), tmp_path / str(retry))
        try:
            while not any(m.category == "opcua" for m in live.markers()):
                live.step()
            waits[retry] = (live.next_poll - datetime.now(UTC)).total_seconds()
        finally:
            live.close()
    assert 3.5 < waits[None] <= 4.4  # poll_interval, the default
    assert 0 < waits[0.3] <= 0.35, waits  # its own field, 10 % jitter at most


# --------------------------------------------------------------------------- node-opcua


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
def test_node_opcua_sample_server_in_both_modes(tmp_path: Path, mode: str) -> None:
    tags = [{"name": "ns=1;s=FanSpeed", "exportname": "fan_speed"},
            {"name": "Pressure", "exportname": "pressure", "namespace_index": 1},
            {"name": "ns=1;s=SomeDate", "exportname": "some_date"}]
    with node_opcua_sample_server() as sample:
        live = Live(receiver(sample.url, tags, mode=mode, poll_interval=0.5, connection={"timeout": 5},
                             **({"publishing_interval": 0.25, "sampling_interval": 0.1}
                                if mode == "subscribe" else {})), tmp_path)
        live.until(lambda: len([r for r in live.rows() if r["fan_speed"] is not None]) >= 4, timeout=60)
        fan = [r["fan_speed"] for r in live.rows() if r["fan_speed"] is not None]
        assert all(900 <= v <= 1100 for v in fan) and len(set(fan)) > 1  # it moves every 10 ms
        assert live.frames[0].schema["fan_speed"] == pl.Float64
        live.until(lambda: any(r["some_date"] is not None for r in live.rows()))
        assert next(r["some_date"] for r in live.rows() if r["some_date"] is not None) == \
            datetime(2016, 10, 13, 8, 40, tzinfo=UTC)
        live.until(lambda: any(r["pressure"] is not None for r in live.rows()), timeout=10)
        assert [m for m in live.markers()] == []
        live.close()


# --------------------------------------------------------------------------- browse helper


def test_browse_prints_node_ids_browse_names_and_data_types(server: AsyncuaServer) -> None:
    done = subprocess.run([sys.executable, "-m", "connectors.receivers.opcua", "browse", server.url,
                           "--depth", "2"], check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NodeId", "BrowseName", "NodeClass", "DataType"]
    assert any(line.split() == ["ns=2;s=Line1", "2:Line1", "Object"] for line in lines)
    assert any(line.split() == ["ns=2;s=Line1.Temperature", "2:Temperature", "Variable", "Double"]
               for line in lines)
    assert any(line.split() == ["ns=2;s=Line1.Profile", "2:Profile", "Variable", "Double[]"] for line in lines)
    assert not any("i=2253" in line for line in lines)  # the Server object is left out
    shallow = subprocess.run([sys.executable, "-m", "connectors.receivers.opcua", "browse", server.url,
                              "--depth", "1"], check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "ns=2;s=Line1.Temperature" not in shallow.stdout and "ns=2;s=Line1 " in shallow.stdout


def test_browse_a_secure_server_with_the_receivers_certificate(tmp_path: Path) -> None:
    with AsyncuaServer(secure=True) as secure:
        connection = {"security_mode": "SignAndEncrypt", "username": USER, "password": PASSWORD}
        live = Live(receiver(secure.url, [tag("Temperature", "t")], connection=connection), tmp_path)
        live.until(lambda: len(live.frames) >= 1)  # it made its self-signed pair
        live.close()
        pki = tmp_path / "components" / "plc" / "pki"
        security = f"Basic256Sha256,SignAndEncrypt,{pki / 'client_certificate.der'},{pki / 'client_private_key.pem'}"
        done = subprocess.run([sys.executable, "-m", "connectors.receivers.opcua", "browse", secure.url,
                               "--username", USER, "--password", PASSWORD, "--security", security],
                              check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        assert "ns=2;s=Line1.Temperature" in done.stdout


def test_browse_says_why_it_cannot_reach_the_server() -> None:
    from tests.services.process import free_port

    url = f"opc.tcp://127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "connectors.receivers.opcua", "browse", url, "--timeout", "1"],
                          check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr == f"browse {url}: connection refused (nothing listens there)\n"


# --------------------------------------------------------------------------- config


def test_config_checks_connections_security_and_tags() -> None:
    from dataflows.config import validate

    entry = receiver("opc.tcp://plc:4840", [tag("A", "a"), tag("B", "a"), tag("C", "timestamp")],
                     mode="subscribe", on_change=True,
                     connection={"host": "plc", "security_policy": "Basic256Sha256", "password": "x",
                                 "certificate": "/c.pem"})
    document = {"data_receiver": [entry], "transforms": [], "data_transmit": [TRANSMIT]}
    found = {(v.description, tuple(v.json_path), v.level) for v in validate(document)}
    c = ("data_receiver", 0, "connections", 0)
    assert found >= {
        ("give either host (and port) or endpoint", c, "error"),
        ("security_policy needs security_mode Sign or SignAndEncrypt", (*c, "security_policy"), "error"),
        ("certificate and private_key go together", c, "error"),
        ("password without username", (*c, "password"), "error"),
        ("exportname 'a' is also tag 0's", ("data_receiver", 0, "streams", 0, "opcua_tags", 1, "exportname"),
         "error"),
        ("exportname 'timestamp' is a field of every subscription record",
         ("data_receiver", 0, "streams", 0, "opcua_tags", 2, "exportname"), "error"),
        ("on_change applies to mode poll (a subscription sends changes only)",
         ("data_receiver", 0, "on_change"), "warning")}


# --------------------------------------------------------------------------- conformance


@receiver_harness
class OpcUaHarness(ReceiverHarness):
    """Polls with ``on_change``; each Read of ``Seq`` takes the next added value; bad input
    is a Bad status on ``Extra``."""

    protocol = "opcua"
    replayable = False
    repeats_when_broken = True  # a poll before the next add: Seq's last value, Extra now Bad

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.server = AsyncuaServer().start()
        self.seq = self.server.take_reads("Seq")

    def receiver(self) -> dict[str, Any]:
        entry = receiver(self.server.url, [tag("Seq", "seq"), tag("Extra", "extra")], poll_interval=1,
                         on_change=True)
        entry["data_receiver_name"] = "conformance"
        entry["streams"][0].update(asset="conformance", stream_type="test")
        return entry

    def add(self, seqs: range) -> None:
        self.seq.extend(seqs)

    def break_input(self) -> None:
        from asyncua import ua

        self.server.write("Extra", 0.5, status=ua.StatusCodes.BadSensorFailure)

    def heal(self) -> None:
        self.server.write("Extra", 0.5)

    def close(self) -> None:
        self.server.close()


def test_the_guides_configs_validate() -> None:
    from dataflows.config import validate

    blocks = re.findall(r"```json\n(.*?)```", (ROOT / "docs" / "opcua.md").read_text(), re.DOTALL)
    assert len(blocks) == 2
    for block in blocks:
        document = {"data_receiver": [json.loads(block)], "transforms": [], "data_transmit": [TRANSMIT]}
        assert [v for v in validate(document, environ={"OPCUA_PASSWORD": "x"}) if v.level == "error"] == []
