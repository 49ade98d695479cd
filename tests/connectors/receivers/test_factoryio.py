"""The factoryio receiver against the Factory I/O simulator (``tests/simulators/factoryio.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from dataflows.testing import StreamDriver
from tests.connectors.conformance import ReceiverHarness, receiver_harness
from tests.simulators.factoryio import FactoryIoSimulator, demo_scene, tag


@pytest.fixture
def scene() -> Iterator[FactoryIoSimulator]:
    with FactoryIoSimulator() as simulator:
        yield simulator


def test_wildcards_kind_and_type_pick_the_tags(scene: FactoryIoSimulator, tmp_path: Path) -> None:
    streams = [{"asset": "sorter", "stream_type": "s", "names": ["at ?NTRY", "*reset*"], "kind": "input"}]
    p = StreamDriver.of(scene.receiver(streams), tmp_path)
    scene.set("At entry", True)
    (frame,) = p.frames()
    # "*reset*" matches both FACTORY I/O (Reset) tags; kind input keeps one, so no suffix
    assert frame.columns == ["timestamp", "At entry", "FACTORY I/O (Reset)"]
    assert frame.row(0) == (datetime(2026, 1, 1, tzinfo=UTC), True, False)
    assert frame.schema["At entry"] == pl.Boolean
    p.close()


def test_duplicate_names_are_told_apart_by_kind_and_address(scene: FactoryIoSimulator,
                                                            tmp_path: Path) -> None:
    scene.set("Weight", 2.217)
    weights = [t for t in scene.tags if t["name"] == "Weight"]
    weights[1]["value"] = 0  # an integral JSON number on a float tag, as the spec's example shows
    streams = [{"asset": "sorter", "stream_type": "s", "names": ["Weight", "FACTORY I/O*", "Pieces sorted"]}]
    p = StreamDriver.of(scene.receiver(streams), tmp_path)
    scene.set("Pieces sorted", 7)
    (frame,) = p.frames()
    assert frame.drop("timestamp").to_dicts() == [{
        "Weight [input 0]": 2.217, "Weight [input 1]": 0.0,
        "FACTORY I/O (Reset) [output 498]": False, "FACTORY I/O (Reset) [input 498]": False,
        "Pieces sorted": 7}]
    assert frame.schema["Weight [input 1]"] == pl.Float64 and frame.schema["Pieces sorted"] == pl.Int64
    assert scene.value_requests == 1  # every value of the stream in one request
    p.close()


def test_ids_and_every_tag_of_a_type(scene: FactoryIoSimulator, tmp_path: Path) -> None:
    (speed,) = scene.ids("Conveyor speed")
    p = StreamDriver.of(scene.receiver([{"asset": "a", "stream_type": "b", "ids": [speed]}]), tmp_path)
    assert p.frames()[0].drop("timestamp").to_dicts() == [{"Conveyor speed": 1.5}]
    p.close()
    p = StreamDriver.of(scene.receiver([{"asset": "a", "stream_type": "b", "type": "float"}]), tmp_path)
    assert p.frames()[0].columns == ["timestamp", "Weight [input 0]", "Weight [input 1]", "Conveyor speed"]
    p.close()


def test_a_tag_error_is_a_marker_and_the_other_tags_go_on(scene: FactoryIoSimulator,
                                                          tmp_path: Path) -> None:
    streams = [{"asset": "sorter", "stream_type": "s", "names": ["Entry conveyor", "Pieces sorted"]}]
    p = StreamDriver.of(scene.receiver(streams), tmp_path)
    (counter,) = scene.ids("Pieces sorted")
    scene.tag_errors[counter] = (500, "Tag value unavailable.")
    (frame,) = p.frames()
    assert frame.drop("timestamp").to_dicts() == [{"Entry conveyor": True, "Pieces sorted": None}]
    (marker,) = p.markers()
    assert marker.level == "error" and marker.category == "input"
    assert marker.message == f"tag 'Pieces sorted' (id {counter}): 500 Tag value unavailable."
    scene.tag_errors.clear()
    scene.set("Pieces sorted", 3)
    assert p.frames()[0]["Pieces sorted"].to_list() == [3]
    p.close()


def test_a_scene_change_resolves_the_tags_again(scene: FactoryIoSimulator, tmp_path: Path) -> None:
    streams = [{"asset": "sorter", "stream_type": "s", "names": ["Pieces sorted", "Weight"]}]
    p = StreamDriver.of(scene.receiver(streams), tmp_path)
    assert p.frames()[0].columns == ["timestamp", "Pieces sorted", "Weight [input 0]", "Weight [input 1]"]
    # the user opens another scene: new ids, one scale only
    scene.load_scene([tag("Pieces sorted", 4, "int", "input", 12), tag("Weight", 3, "float", "input", 1.25)])
    (frame,) = p.frames()
    assert frame.drop("timestamp").to_dicts() == [{"Pieces sorted": 12, "Weight": 1.25}]
    (marker,) = p.markers()
    assert marker.level == "warning" and "no longer in the scene" in marker.message
    assert "resolved again" in marker.message
    p.close()


def test_server_down_and_back(scene: FactoryIoSimulator, tmp_path: Path) -> None:
    streams = [{"asset": "sorter", "stream_type": "s", "names": ["Pieces sorted"]}]
    p = StreamDriver.of(scene.receiver(streams), tmp_path)
    scene.set("Pieces sorted", 1)
    assert p.frames()[0]["Pieces sorted"].to_list() == [1]
    scene.stop()
    assert p.frames() == []
    (marker,) = p.markers()
    assert marker.category == "factoryio" and marker.level == "error"
    assert marker.message.startswith(f"Factory I/O read failed: GET {scene.base_url}/api/tag")
    assert "ConnectError" in marker.message
    scene.switches.outage = True
    scene.start()
    assert p.frames() == []  # 503: still failing, still marked
    assert "HTTP 503 'Factory I/O is not running a scene.'" in p.markers()[0].message
    scene.switches.outage = False
    scene.set("Pieces sorted", 2)
    assert p.frames()[0]["Pieces sorted"].to_list() == [2]
    assert p.markers() == []  # cleared on recovery
    p.close()


def test_slow_server_times_out(scene: FactoryIoSimulator, tmp_path: Path) -> None:
    streams = [{"asset": "sorter", "stream_type": "s", "names": ["Pieces sorted"]}]
    p = StreamDriver.of(scene.receiver(streams, timeout=0.3), tmp_path)
    scene.switches.slow_seconds = 1.0
    assert p.frames() == []
    assert "no answer within 0.3 s" in p.markers()[0].message
    p.close()


def test_on_change_sends_only_changes_across_a_restart(scene: FactoryIoSimulator, tmp_path: Path) -> None:
    entry = scene.receiver([{"asset": "a", "stream_type": "b", "names": ["Pieces sorted"], "on_change": True}])
    p = StreamDriver.of(entry, tmp_path)
    scene.set("Pieces sorted", 5)
    assert len(p.frames()) == 1
    assert p.frames() == []  # unchanged
    state = p.snapshot()
    p.close()
    p = StreamDriver.of(entry, tmp_path, state)
    assert p.frames() == []  # unchanged across the restart
    scene.set("Pieces sorted", 6)
    assert p.frames()[0]["Pieces sorted"].to_list() == [6]
    p.close()


def test_tags_that_appear_later_are_picked_up(scene: FactoryIoSimulator, tmp_path: Path) -> None:
    p = StreamDriver.of(scene.receiver([{"asset": "a", "stream_type": "b", "names": ["Cutter*"]}]), tmp_path)
    assert p.frames() == []
    (marker,) = p.markers()
    assert marker.level == "warning" and marker.message == "names pattern 'Cutter*' matches no tag of the scene"
    assert scene.value_requests == 0
    scene.load_scene([*scene.tags, tag("Cutter busy", 9, "bit", "input", True)])
    assert p.frames()[0]["Cutter busy"].to_list() == [True]
    p.close()


def test_the_demo_scene_matches_the_documents_example() -> None:
    resets = [t for t in demo_scene() if t["name"] == "FACTORY I/O (Reset)"]
    assert [(t["address"], t["type"], t["kind"]) for t in resets] == [(498, "Bit", "Output"),
                                                                      (498, "Bit", "Input")]


class _QueueScene(FactoryIoSimulator):
    """A scene whose ``seq`` tag takes the next added value at each read (the last one stays)."""

    def __init__(self) -> None:
        super().__init__([tag("seq", 0, "int", "input", -1), tag("extra", 1, "float", "input", 0.5)])
        self.queue: list[int] = []

    def on_read_values(self) -> None:
        if self.queue:
            self.tags[0]["value"] = self.queue.pop(0)


@receiver_harness
class FactoryIoHarness(ReceiverHarness):
    """Tag values of a scene, sent on change; bad input is a tag answered with an error."""

    protocol = "factoryio"
    replayable = False

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.scene = _QueueScene().start()

    def receiver(self) -> dict[str, Any]:
        return self.scene.receiver([{"asset": "conformance", "stream_type": "test",
                                     "names": ["seq", "extra"], "on_change": True}],
                                   data_receiver_name="conformance")

    def add(self, seqs: range) -> None:
        self.scene.queue.extend(seqs)

    def break_input(self) -> None:
        (extra,) = self.scene.ids("extra")
        self.scene.tag_errors[extra] = (500, "Tag value unavailable.")

    def heal(self) -> None:
        self.scene.tag_errors.clear()

    def close(self) -> None:
        self.scene.stop()
