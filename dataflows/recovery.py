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
from dataclasses import dataclass
from pathlib import Path

from dataflows.home import init_recovery, ledger_path, recovery_initialised, recovery_partitions
from dataflows.integrity import check_state
from dataflows.ledger import Ledger

__all__ = ["FRESH_STATE_ENV", "Preflight", "StateLost", "delivered_before", "preflight", "prepare_recovery",
           "refusal"]

#: The environment variable that, set to ``1``, allows a start over with fresh state.
FRESH_STATE_ENV = "FACTORYFLOW_FRESH_STATE"

_log = logging.getLogger("factoryflow")


class StateLost(RuntimeError):
    """The installation delivered records before, and its recovery store is gone: a start
    would deliver everything again. The message is the one line an operator reads."""


@dataclass
class Preflight:
    """What a start must say before it goes ahead (:func:`preflight`).

    :ivar rebuilt: warnings: damaged files that were moved aside and are made anew.
    :ivar refused: one line per reason the start must not go ahead (a damaged file, lost
        state); empty when it may.
    """

    rebuilt: list[str]
    refused: list[str]


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


def _starting_over(fresh_state: bool) -> bool:
    return fresh_state or os.environ.get(FRESH_STATE_ENV) == "1"


def _streams(delivered: dict[tuple[str, str], int]) -> int:
    return len({stream for _, stream in delivered})


def _lost(home: Path, directory: Path, delivered: dict[tuple[str, str], int]) -> str:
    return (f"{home} has delivered {sum(delivered.values()):,} records of {_streams(delivered)} streams, but "
            f"its recovery state {directory} is {'empty' if directory.exists() else 'missing'}: started so, "
            f"every stream would read its source from the start and deliver it all again. Restore "
            f"{directory} (a volume not mounted?), or start over on purpose: `factoryflow run --fresh-state` "
            f"(or {FRESH_STATE_ENV}=1, or POST /v1/ftx/start?fresh_state=true)")


def _other_cluster(directory: Path, partition: int, partitions: int) -> str | None:
    """Why ``directory`` cannot serve process ``partition`` of a cluster of ``partitions``:
    it holds partitions of a cluster of another size (bytewax would refuse to resume)."""
    other = {index: count for index, count in recovery_partitions(directory).items() if count != partitions}
    if not other:
        return None
    return (f"the recovery state {directory} holds partition {', '.join(map(str, sorted(other)))} of a cluster of "
            f"{max(other.values())} processes, but this is process {partition} of {partitions}: run it with the "
            f"process id and addresses it had (factoryflow run --process-id, --addresses), or move {directory} "
            f"aside and start over on purpose with --fresh-state")


def refusal(home: Path, directory: Path, *, fresh_state: bool = False, partition: int = 0,
            partitions: int = 1) -> str | None:
    """Why a start on ``directory`` must not go ahead (the line :class:`StateLost` carries),
    or None: it holds state, nothing was delivered before, or ``fresh_state`` (or
    ``FACTORYFLOW_FRESH_STATE=1``) says to start over. ``partition`` of ``partitions``:
    this process's place in a bytewax cluster (:func:`dataflows.home.init_recovery`); a
    directory of a cluster of another size is refused too."""
    other = _other_cluster(directory, partition, partitions)
    if other is not None:
        return other
    if recovery_initialised(directory, partition if partitions > 1 else None) or _starting_over(fresh_state):
        return None
    delivered = delivered_before(home)
    return _lost(home, directory, delivered) if delivered else None


def preflight(home: Path, directory: Path, *, fresh_state: bool = False, partition: int = 0,
              partitions: int = 1) -> Preflight:
    """Everything checked before a start, by every way of starting (``factoryflow run``,
    ``bytewax.run -r``, the API): the state files (:func:`dataflows.integrity.check_state`,
    which rebuilds a damaged ledger), then whether the recovery state was lost or belongs
    to a cluster of another size (:func:`refusal`)."""
    checked = check_state(home, directory)
    refused = list(checked.refused)
    if not refused:
        problem = refusal(home, directory, fresh_state=fresh_state, partition=partition, partitions=partitions)
        refused += [problem] if problem is not None else []
    return Preflight(checked.rebuilt, refused)


def prepare_recovery(home: Path, directory: Path, *, fresh_state: bool = False, partition: int = 0,
                     partitions: int = 1) -> Path:
    """``directory``, ready for bytewax: initialised (one partition; process ``partition``
    of a cluster of ``partitions``: that partition) when it holds none yet; a start over
    where records were delivered before is logged as a warning.

    :param home: ``$FACTORYFLOW_HOME``, whose delivery ledger says whether records were
        delivered before.
    :param fresh_state: start over even though records were delivered before (also
        ``FACTORYFLOW_FRESH_STATE=1``): every stream reads its source from the start again.
    :raises StateLost: records were delivered before and ``directory`` holds no state
        (:func:`refusal`).
    :raises OSError: the directory cannot be made.
    """
    if recovery_initialised(directory, partition if partitions > 1 else None):
        return directory
    delivered = delivered_before(home)
    if delivered:
        if not _starting_over(fresh_state):
            raise StateLost(_lost(home, directory, delivered))
        _log.warning("starting over with fresh state in %s: %d records of %d streams were delivered "
                     "before; every stream reads its source from the start again", directory,
                     sum(delivered.values()), _streams(delivered))
    return init_recovery(directory, partition, partitions)
