"""Disk space as backpressure, not a crash (issue 25, item 1).

Every durable write of a running job lands on a few volumes: the home (ledger, control
store), the recovery directory (bytewax's snapshots) and each component's directory
(outboxes, spools, ``localfile`` output, receive buffers), any of which may be a mount of
its own. :class:`DiskGuard` keeps a free-space floor on each:

- ``min_free_bytes``: ``FACTORYFLOW_MIN_FREE_BYTES`` when set, else
  :data:`FLOOR_FRACTION` of the volume, between :data:`FLOOR_MIN` and :data:`FLOOR_MAX`;
- while a volume is below its floor, the receivers wait before they read (the runtime
  holds its worker, so no epoch closes and no snapshot is written either), every stream
  and its transmits carry a ``disk full`` marker naming the volume and what is free, and
  what the job holds goes on being delivered (outbox senders and spool forwarders run
  apart from the worker, and the floor leaves them room to delete what they delivered);
  reading resumes on its own once the volume is back over its floor;
- a write that hits ENOSPC or EDQUOT anyway (one batch larger than the floor) waits for
  space and is tried again (:func:`is_disk_full`, :func:`wait_for_space`), taking back
  whatever it wrote half.

Used by :mod:`dataflows.runtime`, :mod:`dataflows.outbox` and the ``localfile`` transmit.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = ["FLOOR_FRACTION", "MIN_FREE_ENV", "DiskFull", "DiskGuard", "Shortage", "WaitNotice", "floor_of",
           "is_disk_full", "wait_for_space"]

#: Environment variable: the free-space floor in bytes, for every volume the job writes.
MIN_FREE_ENV = "FACTORYFLOW_MIN_FREE_BYTES"
#: The default floor: this fraction of the volume's size...
FLOOR_FRACTION = 0.10
#: ... but at least this many bytes (a small volume) ...
FLOOR_MIN = 1024 * 1024
#: ... and at most this many (a big one).
FLOOR_MAX = 1024**3
#: How long (seconds) a look at the volumes is reused.
CHECK_SECONDS = 0.5

_log = logging.getLogger("factoryflow.disk")
T = TypeVar("T")


class DiskFull(OSError):
    """A write cannot be made for lack of disk space, and the job is stopping."""


@dataclass(frozen=True)
class Shortage:
    """A volume below its floor: ``path`` (a directory on it), ``free`` and ``floor`` in bytes."""

    path: Path
    free: int
    floor: int

    def describe(self) -> str:
        """``disk full: 3.1 MB free on /home (min_free_bytes 6.4 MB)``."""
        return f"disk full: {self.free / 1e6:.1f} MB free on {self.path} (min_free_bytes {self.floor / 1e6:.1f} MB)"


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the quota) is full: ENOSPC or EDQUOT (also as a
    Rust library words it, ``(os error 28)``), or SQLite's ``database or disk is full``."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, OSError) and exc.errno is None:  # Rust's (polars'): the errno only in the text
        return f"(os error {errno.ENOSPC})" in str(exc) or f"(os error {errno.EDQUOT})" in str(exc)
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


def floor_of(total: int) -> int:
    """The free-space floor in bytes of a volume of ``total`` bytes (``shutil.disk_usage``'s)."""
    configured = os.environ.get(MIN_FREE_ENV, "").strip()
    if configured:
        return int(configured)
    return int(min(FLOOR_MAX, max(FLOOR_MIN, total * FLOOR_FRACTION)))


class DiskGuard:
    """The free-space floors of the volumes a job writes.

    :param paths: directories the job writes, or a callable giving them (looked at again at
        each check, so a component directory made later counts); missing ones are skipped.
    """

    def __init__(self, paths: Iterable[Path] | Callable[[], Iterable[Path]]) -> None:
        self._paths = paths
        self._lock = threading.Lock()
        self._checked = 0.0
        self._shortage: Shortage | None = None

    def _directories(self) -> list[Path]:
        paths = self._paths() if callable(self._paths) else self._paths
        return [p for p in paths if p.is_dir()]

    def low(self) -> Shortage | None:
        """The first volume below its floor, or None (looked at every :data:`CHECK_SECONDS`)."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked < CHECK_SECONDS:
                return self._shortage
            self._checked = now
            self._shortage = None
            seen: set[int] = set()
            for path in self._directories():
                try:
                    device = path.stat().st_dev
                    if device in seen:
                        continue
                    seen.add(device)
                    usage = shutil.disk_usage(path)
                    free, floor = usage.free, floor_of(usage.total)
                except OSError:  # vanished meanwhile
                    continue
                if free < floor:
                    self._shortage = Shortage(path, free, floor)
                    break
            return self._shortage

    def wait_while_low(self, stopping: threading.Event, log: logging.Logger, waiting: str) -> float:
        """Wait while a volume is below its floor, or until ``stopping`` is set: a warning
        naming the volume and what ``waiting`` (``"reading waits for space"``) when the wait
        starts and every 30 s. Returns the seconds waited (0: no volume was low)."""
        started, said = time.monotonic(), None
        while (shortage := self.low()) is not None and not stopping.is_set():
            if said is None or time.monotonic() - said >= 30:
                said = time.monotonic()
                log.warning("%s: %s", shortage.describe(), waiting)
            stopping.wait(CHECK_SECONDS)
        return 0.0 if said is None else time.monotonic() - started


def wait_for_space(write: Callable[[], T], where: Path, stopping: threading.Event,
                   log: logging.Logger, full: Callable[[str | None], None] | None = None,
                   undo: Callable[[], None] | None = None) -> T:
    """Run ``write`` and return what it returns; while it fails for lack of disk space,
    ``undo`` what it wrote half, wait and try again (a warning every 30 s; ``full`` is told
    the message when the wait starts and ``None`` when it ends).

    :param where: the directory written, for the message.
    :raises DiskFull: still no space when ``stopping`` is set.
    :raises Exception: whatever else ``write`` raises.
    """
    notice = WaitNotice(log, full)
    while True:
        try:
            result = write()
            break
        except (OSError, sqlite3.OperationalError) as exc:
            if not is_disk_full(exc):
                raise
            if undo is not None:
                undo()
            free = shutil.disk_usage(where).free
            message = (f"disk full: {free / 1e6:.1f} MB free on {where}: waiting for space before writing "
                       "again (nothing is dropped)")
            if stopping.is_set():
                raise DiskFull(errno.ENOSPC, f"{message}; stopping without it: the records are read "
                                             "again at the next start") from exc
            notice.tick(message)
    notice.end()
    return result


class WaitNotice:
    """What a write waiting for room says: a warning when the wait starts and every 30 s,
    ``full(message)`` once when it starts and ``full(None)`` when it is over."""

    def __init__(self, log: logging.Logger, full: Callable[[str | None], None] | None) -> None:
        self._log = log
        self._full = full
        self.waited = 0.0  # seconds

    def tick(self, message: str) -> None:
        """One turn of the wait (0.5 s), saying ``message`` when due."""
        if self.waited % 30 == 0:
            self._log.warning("%s", message)
            if self.waited == 0 and self._full is not None:
                self._full(message)
        time.sleep(0.5)
        self.waited += 0.5

    def end(self) -> None:
        """The wait is over (if there was one)."""
        if self.waited and self._full is not None:
            self._full(None)

