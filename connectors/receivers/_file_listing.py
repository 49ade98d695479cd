"""One listing of a file connection per poll round, shared by a file receiver's streams in
a process (the receiver's ``open_worker``), and each stream's share of it found without
matching every file against every stream's filter.

A stream's poll needs a listing taken after its previous poll, so nothing written before a
poll waits longer than the next poll round. :class:`Listings` keeps the newest listing of
each connection, numbered: a stream asks for one newer than the one it used last, and gets
the kept one when it is (another stream of the round took it) or takes a new one. So
1,000 streams polling one directory every second list it about once a second, not 1,000
times, and each poll of a single stream still sees the store after its previous poll.
"""

from __future__ import annotations

import bisect
import posixpath
import threading
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connectors.receivers._file_reader import Location

__all__ = ["Listing", "Listings"]

_WILDCARDS = "*?["


@dataclass
class Listing:
    """One listing of a connection: every entry below its directory but directories, as
    ``(path, relative path, fsspec info)``, and the listing's number (newer: higher).

    :meth:`selected` finds the entries a stream's patterns match through sorted indexes of
    names and relative paths (built on first use): a pattern's literal prefix narrows the
    entries it is matched against.
    """

    number: int
    entries: list[tuple[str, str, dict[str, Any]]]
    _names: list[tuple[str, int]] | None = field(default=None, repr=False)
    _relatives: list[tuple[str, int]] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def selected(self, patterns: list[str], whole_path: bool) -> list[tuple[str, str, dict[str, Any]]]:
        """The entries whose relative path (``whole_path``) or file name matches one of
        ``patterns`` (``fnmatch``, case-sensitive), in listing order."""
        index = self._index(whole_path)
        found: set[int] = set()
        for pattern in patterns:
            cut = min((pattern.find(c) for c in _WILDCARDS if c in pattern), default=len(pattern))
            prefix = pattern[:cut]
            start = bisect.bisect_left(index, (prefix, -1))
            for name, position in index[start:]:
                if not name.startswith(prefix):
                    break
                if position not in found and fnmatchcase(name, pattern):
                    found.add(position)
        return [self.entries[i] for i in sorted(found)]

    def _index(self, whole_path: bool) -> list[tuple[str, int]]:
        with self._lock:
            if whole_path:
                if self._relatives is None:
                    self._relatives = sorted((relative, i) for i, (_, relative, _) in enumerate(self.entries))
                return self._relatives
            if self._names is None:
                self._names = sorted((posixpath.basename(relative), i)
                                     for i, (_, relative, _) in enumerate(self.entries))
            return self._names


class Listings:
    """The newest listing of each connection of a file receiver, shared by its streams in
    one process (thread-safe: streams read in threads of their own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[int, tuple[threading.Lock, list[Listing | None]]] = {}
        self._numbers = 0

    @property
    def number(self) -> int:
        """The number of the newest listing taken (0: none yet). A stream opened now asks
        for one above it, so its first poll, too, sees the store after it opened."""
        with self._lock:
            return self._numbers

    def listing(self, index: int, location: Location, newer_than: int) -> Listing:
        """A listing of connection ``index`` numbered above ``newer_than``: the kept one
        when it is, else a new one taken through ``location`` (while it is taken, the
        other streams of the connection wait for it rather than list too).

        :raises FileNotFoundError: the connection's directory (or container) does not exist.
        :raises OSError: and the client's errors: listing failed (nothing is kept).
        """
        with self._lock:
            lock, kept = self._connections.setdefault(index, (threading.Lock(), [None]))
        with lock:
            if kept[0] is not None and kept[0].number > newer_than:
                return kept[0]
            entries = _list(location)
            with self._lock:
                self._numbers += 1
                kept[0] = Listing(self._numbers, entries)
            return kept[0]


def _list(location: Location) -> list[tuple[str, str, dict[str, Any]]]:
    fs, root = location.fs, location.directory
    fs.invalidate_cache()  # object stores cache listings; each poll must see the store now
    if location.container is None and not fs.isdir(root):
        raise FileNotFoundError(f"data directory {location.url}{root} does not exist")
    if location.container is not None and not fs.isdir(location.container):
        raise FileNotFoundError(f"{location.url}{location.container} does not exist")
    top = root.rstrip("/") or "/"
    return [(path, posixpath.relpath(path, top), info) for path, info in fs.find(root, detail=True).items()
            if info.get("type", "file") != "directory"]
