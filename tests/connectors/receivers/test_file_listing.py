"""The shared listing of a file connection (``connectors.receivers._file_listing``): a
stream's share of it is what its filters select, and a poll round lists once."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem

from connectors.receivers._file_listing import KEPT_ROUNDS, Listings, local_find
from connectors.receivers._file_reader import Location
from connectors.receivers._files import FileStream

NAMES = ["a.csv", "ab.csv", "b.txt", "s1_0.csv", "s1_1.csv", "s10_0.csv", "s2_0.csv", "x[1].csv", "exact.csv",
         "sub/a.csv", "sub/s1_2.csv", "sub/deep/c.csv", "sub/deep/s1_3.txt", "other/exact.csv", ".hidden.csv"]
FILE_FILTERS = [["*"], ["*.csv"], ["s1_*.csv"], ["s1_*", "s2_*"], ["[ab]*.csv"], ["?b.csv"], ["exact.csv"],
                ["x[[]1].csv"], ["nothing*"], ["*_0.csv", "s1_*.csv"]]
PATH_FILTERS = [["*"], ["sub/*.csv"], ["sub/deep/*"], ["*/exact.csv"], ["s1_*"], ["sub/s1_?.csv", "a.csv"]]


class CountingFs(LocalFileSystem):
    """The local file system, counting its listings."""

    finds = 0

    def find(self, *args: Any, **kwargs: Any) -> Any:
        CountingFs.finds += 1
        return super().find(*args, **kwargs)


def _tree(root: Path) -> Location:
    for name in NAMES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x\n")
    return Location(LocalFileSystem(), str(root))


def test_a_streams_share_is_what_its_filters_select(tmp_path: Path) -> None:
    location = _tree(tmp_path)
    listing = Listings().listing(0, location, 0)
    relatives = [relative for _, relative, _ in listing.entries]
    assert sorted(relatives) == sorted(NAMES)
    for file_filter, path_filter in itertools.chain(((f, None) for f in FILE_FILTERS),
                                                    ((None, p) for p in PATH_FILTERS)):
        stream = FileStream(asset="a", stream_type="s", file_filter=file_filter, path_filter=path_filter)
        expected = [relative for relative in relatives if stream.selects(relative)]
        patterns = path_filter if path_filter is not None else file_filter
        got = [relative for _, relative, _ in listing.selected(patterns, path_filter is not None)]
        assert got == expected, (file_filter, path_filter)


def test_a_poll_round_lists_once_and_each_poll_sees_the_store_after_the_one_before(tmp_path: Path) -> None:
    _tree(tmp_path)
    location = Location(CountingFs(), str(tmp_path))
    listings = Listings()
    CountingFs.finds = 0
    used = {stream: listings.listing(0, location, 0).number for stream in "abc"}  # one round
    assert CountingFs.finds == 1 and len(set(used.values())) == 1
    (tmp_path / "new.csv").write_text("y\n")  # after the round's listing
    first = listings.listing(0, location, used["a"])  # a's next poll lists anew
    assert first.number > used["a"] and CountingFs.finds == 2
    for stream in "bc":  # b and c, later in that round, take a's: it is newer than theirs
        shared = listings.listing(0, location, used[stream])
        assert shared is first and "new.csv" in [r for _, r, _ in shared.entries]
    assert CountingFs.finds == 2
    opened = listings.number  # a stream opened now (a restream): its first poll lists anew
    assert listings.listing(0, location, opened).number > first.number and CountingFs.finds == 3


def test_a_failed_listing_is_not_kept(tmp_path: Path) -> None:
    location = Location(LocalFileSystem(), str(tmp_path / "missing"))
    listings = Listings()
    for _ in range(2):  # each stream that asks gets the error
        with pytest.raises(FileNotFoundError, match="does not exist"):
            listings.listing(0, location, 0)
    (tmp_path / "missing").mkdir()
    assert listings.listing(0, location, 0).entries == []


def test_a_listing_knows_whose_share_changed_since_an_earlier_one(tmp_path: Path) -> None:
    location = Location(LocalFileSystem(), str(tmp_path))
    for name in ("s1_0.csv", "s2_0.csv", "sub/s3_0.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x\n")
    listings = Listings()
    first = listings.listing(0, location, 0)
    s1, s2, s3 = (["s1_*.csv"], False), (["s2_*.csv"], False), (["sub/*"], True)

    def changed(listing: Any, share: tuple[list[str], bool], since: int) -> bool:
        return listing.changed_for(share[0], share[1], since)

    same = listings.listing(0, location, first.number)  # nothing changed
    assert not any(changed(same, share, first.number) for share in (s1, s2, s3))
    (tmp_path / "s1_1.csv").write_text("y\n")  # added
    (tmp_path / "sub" / "s3_0.csv").write_text("x\nmore\n")  # grown
    added = listings.listing(0, location, same.number)
    assert changed(added, s1, same.number) and changed(added, s3, same.number)
    assert not changed(added, s2, same.number)
    assert changed(added, s1, first.number)  # a stream that last looked at the first listing
    (tmp_path / "s2_0.csv").unlink()  # gone
    gone = listings.listing(0, location, added.number)
    assert changed(gone, s2, added.number) and not changed(gone, s1, added.number)
    assert changed(gone, s1, same.number)  # the addition is still known two listings on
    assert changed(gone, s1, 0)  # older than anything kept in mind: not known, so changed
    for _ in range(KEPT_ROUNDS + 1):  # long after: the addition and the removal are forgotten
        gone = listings.listing(0, location, gone.number)
    assert gone.horizon > added.number and changed(gone, s2, added.number)  # too old to tell
    assert not changed(gone, s2, gone.number - 1) and listings.newest(0) is gone


def test_a_listing_being_taken_is_known_without_waiting_for_it(tmp_path: Path) -> None:
    listings = Listings()
    seen: list[bool] = []

    class Watching(LocalFileSystem):
        def find(self, *args: Any, **kwargs: Any) -> Any:
            seen.append(listings.taking(0))  # what another stream's poll sees meanwhile
            return super().find(*args, **kwargs)

    assert not listings.taking(0)
    listings.listing(0, Location(Watching(), str(tmp_path)), 0)
    assert seen == [True] and not listings.taking(0)


def test_local_listing_gives_what_fsspec_gives(tmp_path: Path) -> None:
    _tree(tmp_path)
    os.mkfifo(tmp_path / "fifo.csv")
    (tmp_path / "to_file.csv").symlink_to(tmp_path / "a.csv")
    (tmp_path / "nowhere.csv").symlink_to(tmp_path / "missing.csv")
    (tmp_path / "to_dir").symlink_to(tmp_path / "sub")  # not followed: fsspec's walk does not either
    (tmp_path / "sub" / "loop").symlink_to(tmp_path / "sub")
    (tmp_path / "empty").mkdir()
    fs = LocalFileSystem()
    theirs = {path: info for path, info in fs.find(str(tmp_path), detail=True).items()}
    ours = local_find(fs._strip_protocol(str(tmp_path)))
    assert [path for path, _ in ours] == list(theirs)  # the same paths, in the same order
    for path, info in ours:
        assert info == {key: theirs[path][key] for key in info}, path
    assert {info["type"] for _, info in ours} == {"file", "other"}
