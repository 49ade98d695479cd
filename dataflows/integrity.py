"""The state files, checked at start: a damaged one is named, and what can be rebuilt is.

Every SQLite file an installation keeps gets SQLite's ``PRAGMA quick_check`` before the
dataflow starts (:func:`check_state`):

- the delivery ledger and the control store hold counters, markers and restream
  requests: a damaged one is moved aside (``<file>.damaged-<UTC time>``), a warning says
  so, and a new one is made; delivery goes on;
- a recovery partition (the streams' state), an outbox or spool (records not yet
  delivered) or a receive buffer (messages not yet read) cannot be rebuilt: the start is
  refused with one line naming the file, what it holds and the command that moves it
  aside, ``factoryflow set-aside FILE`` (:func:`set_aside`), and what that costs.

Implements "A damaged file is named, and what can be rebuilt is rebuilt" of the durability
rules in ``docs/delivery.md``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dataflows.home import components_dir, control_path, ledger_path

__all__ = ["StateCheck", "check_state", "damage", "set_aside"]

#: What each kind of state file holds, and what moving it aside costs.
_COSTS = {
    "outbox.sqlite": ("records not yet delivered to {component}",
                      "they are not delivered (restream their streams to send them again)"),
    "spool.sqlite": ("batches not yet delivered to {component}",
                     "they are not delivered (restream their streams to send them again)"),
    "messages.sqlite": ("messages {component} received and has not read yet",
                        "they are lost, unless the broker still holds them"),
}


@dataclass
class StateCheck:
    """What :func:`check_state` found.

    :ivar rebuilt: one line per damaged file that was moved aside and is made anew.
    :ivar refused: one line per damaged file that stops the start, naming the command.
    """

    rebuilt: list[str]
    refused: list[str]


def damage(path: Path) -> str | None:
    """What is wrong with the SQLite file at ``path`` (``quick_check``, read-only), or None
    when it is sound or absent."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        db.close()
    problems = [str(row[0]) for row in rows if row[0] != "ok"]
    return "; ".join(problems[:3]) if problems else None


def _records_in(path: Path) -> str:
    """How many records or batches an outbox or spool says it holds, as far as it can be read."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            (records,) = db.execute("SELECT records FROM depth").fetchone()
        finally:
            db.close()
        return f"{int(records):,}"
    except (sqlite3.Error, TypeError):
        return "an unknown number of"


def set_aside(path: Path, now: datetime | None = None) -> Path:
    """Move the SQLite file ``path`` (and its ``-wal`` and ``-shm``) aside, to
    ``<path>.damaged-<UTC time>``; returns where it went.

    :raises FileNotFoundError: there is no such file.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    path.rename(target)
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            extra.rename(target.with_name(target.name + suffix))
    return target


def check_state(home: Path, recovery: Path) -> StateCheck:
    """Check every state file of the installation at ``home`` (and the recovery
    directory ``recovery``): rebuild the ledger and the control store when damaged,
    and name every other damaged file (see the module docstring)."""
    rebuilt: list[str] = []
    refused: list[str] = []
    for path, what in ((ledger_path(home), "counters and markers"), (control_path(home), "restream requests")):
        problem = damage(path)
        if problem is not None:
            try:
                target = set_aside(path)
            except FileNotFoundError:  # another process of a bytewax cluster moved it first
                continue
            rebuilt.append(f"{path} was damaged ({problem}): moved aside to {target.name}; a new one is made "
                           f"(its {what} start again from nothing); delivery goes on")
    for part in sorted(recovery.glob("part-*.sqlite3")):
        problem = damage(part)
        if problem is not None:
            refused.append(
                f"{part} is damaged ({problem}): it holds the streams' state (cursor values, seen files). "
                f"`factoryflow set-aside {part}` moves it aside; the next start then needs --fresh-state, and "
                "every source is read from the start again")
    for path in sorted(components_dir(home).glob("*/*.sqlite")):
        costs = _COSTS.get(path.name)
        problem = damage(path) if costs is not None else None
        if costs is None or problem is None:  # not a file of ours to check, or sound
            continue
        holds, cost = costs
        count = _records_in(path) if path.name != "messages.sqlite" else "the"
        refused.append(f"{path} is damaged ({problem}): it holds {count} {holds.format(component=path.parent.name)}. "
                       f"`factoryflow set-aside {path}` moves it aside; {cost}")
    return StateCheck(rebuilt, refused)
