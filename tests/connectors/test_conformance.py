"""The standard suite every connector passes, parametrised over the registry.

For every registered component:

- its worked ``example`` validates (runnable components: as the main job would run it);
- building it does no I/O: decoding its config, ``open_stream`` for receivers,
  ``sink`` for transmits (an audit hook watches for files, sockets, directories, SQLite);
- runnable receivers, through the runtime's partition against their harness's real
  source: records arrive; a snapshot then resume continues where it stopped, with
  nothing twice and nothing lost; a restream request resets the state so everything is
  read again (a live source's present value, for one that keeps no history); bad input marks the stream and reading goes on;
- runnable transmits: ``write_batch`` returns only once every record is durable at the
  endpoint (or in its outbox), acknowledged in the ledger;
- parsers: good bytes give one row per record, bad bytes a ``ParseError`` naming the file.

A connector's own test module supplies the harness (see ``tests/connectors/conformance.py``).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pytest

import tests.connectors
from dataflows import registry
from dataflows.config import load, validate
from dataflows.control import ControlStore, control_path
from dataflows.delivery import transmit_sink
from dataflows.ledger import Ledger, ledger_path
from dataflows.outbox import Outbox
from dataflows.records import Batch, StreamKey
from dataflows.runtime import PartitionState
from dataflows.sdk import ParseError, RunContext, SourceFile
from dataflows.testing import Clock, StreamDriver, load_receiver, sink_partition, store_once
from tests.connectors import conformance

for _module in pkgutil.walk_packages(tests.connectors.__path__, "tests.connectors."):
    if _module.name.rsplit(".", 1)[-1].startswith("test_") and _module.name != __name__:
        importlib.import_module(_module.name)  # each registers its connector's harness

STREAM = StreamKey("conformance", "test")
TRANSMIT = {"transmit_name": "sink", "transmit_type": "localfile"}


def _components(reg: registry.Registry[Any], runnable_only: bool = False) -> list[str]:
    return [tag for tag in reg.tags() if not runnable_only or reg.get(tag).runnable]


def _env_names(value: Any) -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", msgspec.json.encode(value).decode()))


# --------------------------------------------------------------------------- examples and templates


def _example_document(section: str, tag: str) -> dict[str, Any]:
    cls = registry.REGISTRIES[section].get(tag)
    assert cls is not None and cls.example is not None, f"{section} {tag!r} has no worked example"
    document: dict[str, Any] = {"data_receiver": [], "transforms": [], "data_transmit": [TRANSMIT]}
    if section == "parsers":
        receiver = registry.receivers.get("localfile").example
        document["data_receiver"] = [{**receiver, "parsers": [cls.example],
                                      "streams": [{"asset": "a", "stream_type": "b",
                                                   "parser": cls.example["parser_name"]}]}]
    elif section == "data_transmit":
        document["data_transmit"] = [cls.example]
    else:
        document[section] = [cls.example]
    if section != "data_receiver":
        document["data_receiver"] = document["data_receiver"] or [registry.receivers.get("localfile").example]
    return document


ALL = [(section, tag) for section, reg in registry.REGISTRIES.items() for tag in _components(reg)]


@pytest.mark.parametrize(("section", "tag"), ALL, ids=[f"{s}:{t}" for s, t in ALL])
def test_worked_example_validates(section: str, tag: str) -> None:
    document = _example_document(section, tag)
    environ = {name: "from-the-environment" for name in _env_names(document)}
    runnable = registry.REGISTRIES[section].get(tag).runnable
    errors = [v for v in validate(document, runnable=runnable, environ=environ) if v.level == "error"]
    assert errors == []
    assert [v for v in validate(document, environ=environ) if "no transmit" not in v.description] == []


@pytest.mark.parametrize("tag", _components(registry.receivers))
def test_every_receiver_carries_a_template_that_validates(tag: str) -> None:
    cls = registry.receivers.get(tag)
    assert cls.template is not None and cls.template.receiver["protocol"] == tag
    document = {"data_receiver": [cls.template.receiver], "transforms": cls.template.transforms,
                "data_transmit": [registry.transmits.get("remotedatapost").template]}
    assert [v for v in validate(document) if v.level == "error"] == []


def test_every_runnable_component_has_a_harness() -> None:
    missing = ([f"receiver {t}" for t in _components(registry.receivers, True) if t not in conformance.RECEIVERS]
               + [f"transmit {t}" for t in _components(registry.transmits, True) if t not in conformance.TRANSMITS]
               + [f"parser {t}" for t in _components(registry.parsers, True) if t not in conformance.PARSERS])
    assert missing == []


# --------------------------------------------------------------------------- no I/O in constructors

_WATCHED = {"open", "socket.connect", "socket.getaddrinfo", "os.listdir", "os.scandir", "os.mkdir",
            "sqlite3.connect", "subprocess.Popen", "shutil.rmtree", "os.remove"}
_io_seen: list[tuple[str, tuple[Any, ...]]] | None = None


_CODE = tuple({sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[2])})


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _io_seen is None or event not in _WATCHED:
        return
    if event in ("open", "os.listdir", "os.scandir") and args:
        path = str(args[0])
        if path.endswith((".py", ".pyc", ".so", ".pth", ".typed")) or "/zoneinfo/" in path \
                or path.startswith(_CODE):
            return  # importing code, not touching a plant system
    _io_seen.append((event, args))


sys.addaudithook(_audit)


def io_during(action: Callable[[], Any]) -> tuple[Any, list[tuple[str, tuple[Any, ...]]]]:
    """Run ``action``; return its result and the I/O events it caused."""
    global _io_seen
    _io_seen = []
    try:
        result = action()
    finally:
        seen, _io_seen = _io_seen, None
    return result, seen


@pytest.mark.parametrize(("section", "tag"), ALL, ids=[f"{s}:{t}" for s, t in ALL])
def test_building_a_component_does_no_io(section: str, tag: str, tmp_path: Path) -> None:
    document = _example_document(section, tag)
    environ = {name: "from-the-environment" for name in _env_names(document)}
    config, seen = io_during(lambda: load(document, runnable=False, environ=environ))
    assert seen == []
    ctx = RunContext(home=tmp_path / "home")
    if section == "data_receiver":
        receiver = config.data_receiver[0]
        for stream in receiver.stream_list:
            if not receiver.runnable:
                with pytest.raises(NotImplementedError, match="cannot run yet"):
                    receiver.open_stream(stream, None, ctx, receiver.open_worker(ctx))
                continue
            reader, seen = io_during(lambda s=stream: receiver.open_stream(s, None, ctx, receiver.open_worker(ctx)))
            assert seen == []
            reader.close()
    elif section == "data_transmit":
        _, seen = io_during(lambda: transmit_sink(config.data_transmit[0], ctx))
        assert seen == []
    assert not (tmp_path / "home").exists()


# --------------------------------------------------------------------------- receivers


@pytest.fixture(params=_components(registry.receivers, runnable_only=True))
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[conformance.ReceiverHarness]:
    harness = conformance.RECEIVERS[request.param](tmp_path, request)
    yield harness
    harness.close()


class Stream:
    """One receiver stream run through the runtime's partition, as bytewax runs it, on a
    clock an hour ahead of the wall clock (files written now are already still)."""

    def __init__(self, harness: conformance.ReceiverHarness, home: Path) -> None:
        self.receiver = load_receiver(harness.receiver())
        (self.stream,) = self.receiver.stream_list
        assert self.stream.key == STREAM
        self.clock = Clock.ahead(3600)
        self.ctx = RunContext(home=home, now=self.clock,
                              expected_transmits={(self.receiver.data_receiver_name, STREAM):
                                                  frozenset({"sink"})})
        self.driver: StreamDriver | None = None

    @property
    def partition(self) -> Any:
        assert self.driver is not None
        return self.driver.partition

    def open(self, state: Any = None) -> None:
        self.driver = StreamDriver(self.receiver, self.ctx, state)

    def pump(self, until: Callable[[list[int]], bool], heal: Callable[[], None] | None = None,
             timeout: float = 20.0) -> list[int]:
        """Poll (moving the clock to each next poll) until ``until(seqs so far)``; ``heal``
        runs after a poll that left the stream marked."""
        assert self.driver is not None

        def seqs(batches: list[Batch]) -> list[int]:
            assert all(batch.stream == STREAM for batch in batches)
            return [seq for batch in batches for seq in batch.frame["seq"].to_list()]

        def between() -> None:
            if heal is not None and self.markers():
                heal()

        return seqs(self.driver.pump(lambda got: until(seqs(got)), timeout=timeout, between=between))

    def drain(self) -> list[int]:
        """Everything ready over the next few polls."""
        assert self.driver is not None
        seqs: list[int] = []
        for _ in range(4):
            for batch in self.driver.next_batch():
                seqs.extend(batch.frame["seq"].to_list())
            self.clock.advance(self.receiver.poll_interval + 0.01)
        return seqs

    def markers(self) -> list[Any]:
        return self.driver.markers() if self.driver is not None else []

    def close(self) -> None:
        if self.driver is not None:
            self.driver.close()


def _enough(n: int) -> Callable[[list[int]], bool]:
    return lambda seqs: len(seqs) >= n


def test_snapshot_then_resume_continues_where_it_stopped(source: conformance.ReceiverHarness,
                                                         tmp_path: Path) -> None:
    stream = Stream(source, tmp_path / "home")
    source.add(range(10))
    stream.open()
    assert stream.pump(_enough(10)) == list(range(10))
    state = stream.partition.snapshot()
    assert isinstance(state, PartitionState)
    stream.close()
    source.add(range(10, 15))
    stream.open(state)
    assert stream.pump(_enough(5)) == list(range(10, 15))
    assert stream.drain() == []  # nothing twice
    stream.close()


#: Receivers whose harness reads records without a source position: they poll live values
#: (a new reading after a restart is a new record, not one read again). OPC UA subscriptions
#: carry positions (``test_opcua.py``); its harness polls.
UNPOSITIONED = {"factoryio", "opcua"}


def test_records_read_again_after_a_crash_are_not_stored_twice(source: conformance.ReceiverHarness,
                                                                tmp_path: Path) -> None:
    """Batches read again from an older snapshot carry the positions they had, so an outbox
    stores none of them twice, and stores what is new (``docs/delivery.md``)."""
    stream = Stream(source, tmp_path / "home")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.keep_positions("recovery-1")

    def store(batches: list[Batch]) -> list[int]:
        return [seq for b in store_once(outbox, batches) for seq in b.frame["seq"].to_list()]

    def pump(n: int) -> list[Batch]:
        assert stream.driver is not None
        return stream.driver.pump(lambda got: sum(b.frame.height for b in got) >= n)

    source.add(range(5))
    stream.open()
    assert store(pump(5)) == list(range(5))
    older = stream.partition.snapshot()
    source.add(range(5, 10))
    read = pump(5)
    if source.protocol in UNPOSITIONED:
        assert all(batch.position is None for batch in read)
        stream.close()
        outbox.close()
        return
    assert all(batch.position is not None for batch in read if batch.frame.height)
    assert store(read) == list(range(5, 10))
    stream.close()
    stream.open(older)  # a crash: the stream resumes from the older snapshot
    assert store(pump(5)) == []
    source.add(range(10, 13))
    assert store(pump(3)) == [10, 11, 12]
    stream.close()
    outbox.close()


def test_restream_request_resets_the_state(source: conformance.ReceiverHarness, tmp_path: Path) -> None:
    stream = Stream(source, tmp_path / "home")
    source.add(range(6))
    stream.open()
    assert stream.pump(_enough(6)) == list(range(6))
    store = ControlStore(control_path(stream.ctx.home))
    request = store.request_restream([(stream.receiver.data_receiver_name, str(STREAM))])
    stream.clock.advance(1.05)  # the partition looks at the control store once a second, by its clock
    # a live source has only its present value: the reset state sends it again
    again = list(range(6)) if source.replayable else [5]
    assert stream.pump(_enough(len(again))) == again
    assert store.applied(stream.receiver.data_receiver_name, str(STREAM)) == request
    assert stream.partition.snapshot().restream_id == request
    store.close()
    stream.close()


def test_bad_input_marks_the_stream_and_reading_goes_on(source: conformance.ReceiverHarness,
                                                        tmp_path: Path) -> None:
    stream = Stream(source, tmp_path / "home")
    source.add(range(3))
    stream.open()
    assert stream.pump(_enough(3)) == [0, 1, 2]
    source.break_input()
    marked: list[Any] = []

    def heal() -> None:
        marked.extend(stream.markers())
        source.heal()

    source.add(range(3, 6))
    got = stream.pump(lambda seqs: len([seq for seq in seqs if seq > 2]) >= 3, heal=heal)
    if source.repeats_when_broken and got[:1] == [2]:  # the last record again, with the bad status
        got = got[1:]
    assert got == [3, 4, 5]
    marked.extend(stream.markers())
    assert any(m.level == "error" and m.component == stream.receiver.data_receiver_name
               and m.component_type == "Receiver" for m in marked), marked
    source.add(range(6, 8))
    assert stream.pump(_enough(2)) == [6, 7]  # it goes on
    stream.close()


# --------------------------------------------------------------------------- transmits


@pytest.mark.parametrize("tag", _components(registry.transmits, runnable_only=True))
def test_write_batch_returns_only_after_a_durable_write(tag: str, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    harness = conformance.TRANSMITS[tag](tmp_path, request)
    home = tmp_path / "home"
    document = {"data_receiver": [], "transforms": [], "data_transmit": [harness.transmit(home)]}
    transmit = load(document, runnable=False, environ={}).data_transmit[0]
    partition = sink_partition(transmit, RunContext(home=home))
    frame = pl.DataFrame({"timestamp": [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=s)
                                        for s in range(100)], "seq": list(range(100))})
    try:
        partition.write_batch([Batch("recv", STREAM, frame, "conformance", ack_key="k1")])
        assert set(harness.durable_seqs(home, 100)) >= set(range(100))  # at once, no waiting
        ledger = Ledger(ledger_path(home))
        assert ledger.acked_by("recv", str(STREAM), "k1") == {transmit.transmit_name}
    finally:
        partition.close()
        harness.close()


# --------------------------------------------------------------------------- parsers


@pytest.mark.parametrize("tag", _components(registry.parsers, runnable_only=True))
def test_parser_reads_good_input_and_names_bad_input(tag: str, tmp_path: Path) -> None:
    harness = conformance.PARSERS[tag]()
    parser = msgspec.convert(harness.parser(), registry.parsers.union())
    good = harness.good(range(5))
    file = SourceFile("good.file", len(good), datetime.now(UTC), tmp_path / "store")  # as receivers pass it
    frame = parser.parse(b"", good, source="good.file", first_line=1, file=file)
    assert harness.seqs(frame) == [0, 1, 2, 3, 4]
    with pytest.raises(ParseError) as raised:
        parser.parse(b"", harness.bad(), source="bad.file", first_line=1)
    assert raised.value.source == "bad.file" and str(raised.value).startswith("bad.file")
