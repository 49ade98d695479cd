"""The outbox file shared by several senders: shards of streams."""

from __future__ import annotations

from pathlib import Path

from dataflows.outbox import Outbox, shard_of


def test_shards_take_the_known_streams_in_turns_and_others_by_hash() -> None:
    streams = ["line1:csv", "line2:csv", "line3:csv", "line4:csv"]
    assert [shard_of(s, list(reversed(streams)), 2) for s in streams] == [0, 1, 0, 1]
    assert [shard_of(s, streams, 3) for s in streams] == [0, 1, 2, 0]
    others = [shard_of(f"old{n}:csv", streams, 2) for n in range(20)]
    assert set(others) == {0, 1}
    assert others == [shard_of(f"old{n}:csv", [], 2) for n in range(20)]  # stable


def test_senders_of_shards_each_get_their_streams_in_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "spool.sqlite")
    streams = [f"machine_{n}:temperature" for n in range(8)]
    outbox.append([(stream, None, f"{stream} {i}".encode()) for i in range(3) for stream in streams])
    seen: list[str] = []
    for k in (0, 1):
        entries = outbox.peek(1000, 1 << 20, lambda stream, k=k: shard_of(stream, streams, 2) == k)
        assert {e.stream for e in entries} == set(streams[k::2])
        for stream in streams[k::2]:  # each stream's records, in the order stored
            assert [e.body for e in entries if e.stream == stream] == [f"{stream} {i}".encode() for i in range(3)]
        outbox.delete(entries)  # ids with the other shard's between them
        seen += [e.stream for e in entries]
        assert outbox.depth()[0] == 24 - len(seen)
    assert sorted(seen) == sorted(streams * 3)
    assert outbox.peek(1000, 1 << 20) == [] and outbox.depth() == (0, 0)
    outbox.close()
