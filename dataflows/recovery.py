"""The recovery store (bytewax's, ``<home>/recovery``): made ready before a start, and never
lost silently.

Every stream's state (cursor values, seen files, the last restream applied) lives in the
recovery store. Without it a stream reads its source from the start again, and every
transmit gets everything again. So:

- a directory holding no bytewax partition (``part-*.sqlite3``), missing or empty (a
  freshly mounted volume, its ``lost+found`` aside), is initialised;
- unless the installation has delivered records before (its delivery ledger says so):
  then the store was lost (deleted, a volume not mounted) and :func:`prepare_recovery`
  raises :class:`StateLost` with one line naming how much was delivered and how to go
  on: restore the directory, or start over on purpose with ``--fresh-state`` (or
  ``FACTORYFLOW_FRESH_STATE=1``), which logs a warning and initialises it.

Implements the "state is never lost silently" rule of ``docs/delivery.md`` (State).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dataflows.home import init_recovery, ledger_path
from dataflows.ledger import Ledger

__all__ = ["FRESH_STATE_ENV", "StateLost", "delivered_before", "is_initialised", "prepare_recovery", "refusal"]

#: The environment variable that, set to ``1``, allows a start over with fresh state.
FRESH_STATE_ENV = "FACTORYFLOW_FRESH_STATE"

_log = logging.getLogger("factoryflow")


class StateLost(RuntimeError):
    """The installation delivered records before, and its recovery store is gone: a start
    would deliver everything again. The message is the one line an operator reads."""


def is_initialised(directory: Path) -> bool:
    """Whether ``directory`` holds a bytewax recovery partition (``part-*.sqlite3``)."""
    return any(directory.glob("part-*.sqlite3"))


def delivered_before(home: Path) -> dict[tuple[str, str], int]:
    """Records the installation at ``home`` delivered so far, per ``(transmit, stream)``
    (empty when it has no delivery ledger yet; the ledger is not created here)."""
    path = ledger_path(home)
    if not path.exists():
        return {}
    ledger = Ledger(path)
    try:
        return {key: records for key, records in ledger.delivered().items() if records > 0}
    finally:
        ledger.close()


def refusal(home: Path, directory: Path, *, fresh_state: bool = False) -> str | None:
    """Why a start on ``directory`` must not go ahead (the line :class:`StateLost` carries),
    or None: it holds state, nothing was delivered before, or ``fresh_state`` (or
    ``FACTORYFLOW_FRESH_STATE=1``) says to start over."""
    if is_initialised(directory) or fresh_state or os.environ.get(FRESH_STATE_ENV) == "1":
        return None
    delivered = delivered_before(home)
    if not delivered:
        return None
    total = sum(delivered.values())
    streams = len({stream for _, stream in delivered})
    return (f"{home} has delivered {total:,} records of {streams} streams, but its recovery state "
            f"{directory} is {'empty' if directory.exists() else 'missing'}: started so, every stream "
            f"would read its source from the start and deliver it all again. Restore {directory} "
            f"(a volume not mounted?), or start over on purpose: `factoryflow run --fresh-state` "
            f"(or {FRESH_STATE_ENV}=1)")


def prepare_recovery(home: Path, directory: Path, *, fresh_state: bool = False) -> Path:
    """``directory``, ready for bytewax: initialised (one partition) when it holds none yet;
    a start over where records were delivered before is logged as a warning.

    :param home: ``$FACTORYFLOW_HOME``, whose delivery ledger says whether records were
        delivered before.
    :param fresh_state: start over even though records were delivered before (also
        ``FACTORYFLOW_FRESH_STATE=1``): every stream reads its source from the start again.
    :raises StateLost: records were delivered before and ``directory`` holds no state
        (:func:`refusal`).
    :raises OSError: the directory cannot be made.
    """
    if is_initialised(directory):
        return directory
    problem = refusal(home, directory, fresh_state=fresh_state)
    if problem is not None:
        raise StateLost(problem)
    delivered = delivered_before(home)
    if delivered:
        _log.warning("starting over with fresh state in %s: %d records of %d streams were delivered "
                     "before; every stream reads its source from the start again", directory,
                     sum(delivered.values()), len({stream for _, stream in delivered}))
    return init_recovery(directory)
