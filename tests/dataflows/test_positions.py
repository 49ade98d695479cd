"""Source positions kept by a spool or outbox: records read again after a crash are not
stored twice; a restream and a start over store them again (``dataflows/positions.py``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from dataflows.outbox import Outbox
from dataflows.positions import Position
from dataflows.records import Batch, StreamKey
from dataflows.testing import store_once

STREAM = StreamKey("press", "cycle")


def _file_batch(first: int, count: int, scope: str = "a.csv", identity: str = "1.0",
                generation: int = 0) -> Batch:
    frame = pl.DataFrame({"n": list(range(first, first + count))})
    position = replace(Position.records(scope, first, count, identity), generation=generation)
    return Batch("files", STREAM, frame, scope, position=position)


def _store(outbox: Outbox, batches: list[Batch]) -> list[int]:
    """Store what is fresh of ``batches`` as an outbox writer does; the values stored."""
    return [v for b in store_once(outbox, batches) for v in b.frame["n"].to_list()]


def _outbox(path: Path, recovery: str | None = "g1") -> Outbox:
    outbox = Outbox(path)
    outbox.keep_positions(recovery)
    return outbox


def test_records_read_again_are_not_stored_twice_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = _outbox(path)
    assert _store(outbox, [_file_batch(0, 5), _file_batch(5, 5)]) == list(range(10))
    outbox.close()
    outbox = _outbox(path)  # a restart: the receiver reads again from an older snapshot, in other chunks
    assert _store(outbox, [_file_batch(0, 3), _file_batch(3, 9)]) == [10, 11]
    assert _store(outbox, [_file_batch(12, 2)]) == [12, 13]
    assert outbox.depth()[0] == 14
    outbox.close()


def test_a_file_made_anew_under_the_same_name_and_another_file_are_stored(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path / "outbox.sqlite")
    assert _store(outbox, [_file_batch(0, 4)]) == [0, 1, 2, 3]
    assert _store(outbox, [_file_batch(0, 2, identity="2.0")]) == [0, 1]  # rewritten: a new version
    assert _store(outbox, [_file_batch(0, 2, scope="b.csv")]) == [0, 1]
    outbox.close()


def test_a_restream_stores_again_once_and_older_reads_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = _outbox(path)
    _store(outbox, [_file_batch(0, 4)])
    assert _store(outbox, [_file_batch(0, 4, generation=1)]) == [0, 1, 2, 3]
    assert _store(outbox, [_file_batch(0, 4, generation=1)]) == []
    outbox.close()
    outbox = _outbox(path)
    assert _store(outbox, [_file_batch(0, 6, generation=0)]) == []  # read before the restream
    assert _store(outbox, [_file_batch(2, 4, generation=1)]) == [4, 5]
    outbox.close()


def test_a_start_over_forgets_the_positions_and_no_recovery_keeps_none(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = _outbox(path)
    _store(outbox, [_file_batch(0, 4)])
    outbox.close()
    outbox = _outbox(path, recovery="g2")  # --fresh-state: a new recovery store
    assert _store(outbox, [_file_batch(0, 4)]) == [0, 1, 2, 3]
    outbox.close()
    outbox = _outbox(path, recovery=None)  # no state kept: every start reads everything again
    assert _store(outbox, [_file_batch(0, 4)]) == [0, 1, 2, 3]
    outbox.close()


def test_cursor_values_compare_left_to_right_and_nulls_are_kept(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path / "outbox.sqlite")

    def rows(*cursor: tuple[datetime | None, int]) -> Batch:
        ordinals = pl.DataFrame({"ts": [c[0] for c in cursor], "id": [c[1] for c in cursor]},
                                schema={"ts": pl.Datetime("us"), "id": pl.Int64})
        return Batch("sql", STREAM, pl.DataFrame({"n": [c[1] for c in cursor]}), "SELECT",
                     position=Position("", ordinals))

    t1, t2 = datetime(2026, 1, 1, 0, 0, 1), datetime(2026, 1, 1, 0, 0, 2)
    assert _store(outbox, [rows((t1, 1), (t1, 2), (t2, 3))]) == [1, 2, 3]
    assert _store(outbox, [rows((t1, 2), (t2, 3), (t2, 4), (None, 5))]) == [4, 5]
    outbox.close()


def test_a_replicated_copy_keeps_positions_of_its_own(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path / "outbox.sqlite")
    batch = _file_batch(0, 3)
    copy = replace(batch, stream=StreamKey("press2", "cycle"), origin=STREAM)
    assert _store(outbox, [batch, copy]) == [0, 1, 2, 0, 1, 2]
    assert _store(outbox, [batch, copy]) == []
    outbox.close()


def test_a_transform_that_changes_the_row_count_drops_the_positions() -> None:
    batch = _file_batch(0, 3)
    assert batch.with_frame(batch.frame.with_columns(pl.col("n") * 2)).position is not None
    assert batch.with_frame(batch.frame.head(2)).position is None


def test_with_lag_a_record_is_known_by_its_key_within_the_window(tmp_path: Path) -> None:
    """An SQL cursor with ``lag``: rows come out of timestamp order within ``lag``; a late row
    read again after a crash is known by its key, a new late row is stored, and a row older
    than the window behind the newest stored is taken as stored."""
    outbox = _outbox(tmp_path / "outbox.sqlite")

    def rows(*keyed: tuple[int, int]) -> Batch:  # (seconds, id)
        ordinals = pl.DataFrame({"ts": [datetime(2026, 1, 1) + timedelta(seconds=s) for s, _ in keyed],
                                 "id": [k for _, k in keyed]}, schema={"ts": pl.Datetime("us"), "id": pl.Int64})
        return Batch("sql", STREAM, pl.DataFrame({"n": [k for _, k in keyed]}), "SELECT",
                     position=Position("", ordinals, lag=10.0))

    assert _store(outbox, [rows((100, 1), (101, 2), (105, 3))]) == [1, 2, 3]
    assert _store(outbox, [rows((100, 1), (101, 2), (98, 4), (105, 3), (106, 5))]) == [4, 5]
    assert _store(outbox, [rows((50, 6), (97, 7), (95, 8))]) == [7]  # 95 and 50 lie behind 96..106
    assert _store(outbox, [rows((200, 9))]) == [9]
    assert _store(outbox, [rows((105, 10), (195, 11))]) == [11]  # the window moved to 190..200
    outbox.close()


def test_scoped_records_compare_within_their_own_scope(tmp_path: Path) -> None:
    """OPC UA: each record names its tag and is known when it equals its tag's last stored
    (the current value a new subscription sends again); clocks may differ and go back."""
    outbox = _outbox(tmp_path / "outbox.sqlite")

    def changes(*tagged: tuple[str, int | None]) -> Batch:  # (tag, seconds)
        sources = [None if s is None else datetime(2026, 1, 1) + timedelta(seconds=s) for _, s in tagged]
        ordinals = pl.DataFrame({"tag": [t for t, _ in tagged], "source": sources},
                                schema={"tag": pl.String, "source": pl.Datetime("us")})
        return Batch("opcua", STREAM, pl.DataFrame({"n": list(range(len(tagged)))}), "opc.tcp://",
                     position=Position("", ordinals, scoped=True))

    def tags(batch: Batch) -> list[str]:
        stored = store_once(outbox, [batch])
        return [t for b in stored if b.position for t in b.position.ordinals["tag"].to_list()]

    assert tags(changes(("fast", 100), ("slow", 10), ("fast", 101))) == ["fast", "slow", "fast"]
    # after a restart: each tag's current value again, then new changes (the slow clock's too)
    assert tags(changes(("fast", 101), ("slow", 10), ("slow", 11), ("fast", 102), ("new", 5))) == \
        ["slow", "fast", "new"]
    assert tags(changes(("slow", 11), ("fast", None))) == ["fast"]  # no source timestamp: kept
    assert tags(changes(("fast", 50))) == ["fast"]  # a clock set back: a new change all the same
    outbox.close()
