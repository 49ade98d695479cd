"""The layout of an installation, ``$FACTORYFLOW_HOME``, in one place.

::

    $FACTORYFLOW_HOME/                   default ./.factoryflow
      conf.d/config.json                 the config ($FACTORYFLOW_CONFIG overrides it)
      recovery/                          bytewax's recovery store (one partition; in a
                                         cluster of N processes, process i's part-i of N)
      log/factorytx_core.log             the dataflow's log (factorytx_web.log: the API's)
      log/dataflow-console.log           the supervised dataflow's console output
      state/ledger.sqlite                delivery ledger, markers, counts
      state/control.sqlite               requests from the API to the dataflow (restream)
      state/dataflow.pid                 the pid of the dataflow the API supervises
      components/<name>/                 a component's own data (outbox, JSON lines, ...)

Every path here is absolute when ``home`` is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

#: The log files of an installation: the dataflow's and the control API's.
CORE_LOG = "factorytx_core.log"
WEB_LOG = "factorytx_web.log"
CONSOLE_LOG = "dataflow-console.log"


def home_dir() -> Path:
    """``$FACTORYFLOW_HOME``, default ``./.factoryflow``, absolute."""
    return Path(os.environ.get("FACTORYFLOW_HOME", ".factoryflow")).resolve()


def default_config_path(home: Path) -> Path:
    """``<home>/conf.d/config.json``: where the config lives unless ``$FACTORYFLOW_CONFIG`` says."""
    return home / "conf.d" / "config.json"


def config_path(home: Path) -> Path:
    """``$FACTORYFLOW_CONFIG``, default ``<home>/conf.d/config.json``."""
    return Path(os.environ.get("FACTORYFLOW_CONFIG", default_config_path(home)))


def recovery_dir(home: Path) -> Path:
    """``<home>/recovery``: bytewax's recovery store."""
    return home / "recovery"


def log_dir(home: Path) -> Path:
    """``<home>/log``: the log files."""
    return home / "log"


def state_dir(home: Path) -> Path:
    """``<home>/state``: the ledger, the control store and the pid file."""
    return home / "state"


def ledger_path(home: Path) -> Path:
    """``<home>/state/ledger.sqlite``: the delivery ledger (:mod:`dataflows.ledger`)."""
    return state_dir(home) / "ledger.sqlite"


def control_path(home: Path) -> Path:
    """``<home>/state/control.sqlite``: the control store (:mod:`dataflows.control`)."""
    return state_dir(home) / "control.sqlite"


def pid_path(home: Path) -> Path:
    """``<home>/state/dataflow.pid``: the pid of the supervised dataflow."""
    return state_dir(home) / "dataflow.pid"


def components_dir(home: Path) -> Path:
    """``<home>/components``: the components' data directories."""
    return home / "components"


def component_dir(home: Path, name: str) -> Path:
    """``<home>/components/<name>``: the data directory of the component ``name``."""
    return components_dir(home) / name


def recovery_initialised(directory: Path, partition: int | None = None) -> bool:
    """Whether ``directory`` holds a bytewax recovery partition (``part-*.sqlite3``), or,
    given ``partition``, that one (``part-<partition>.sqlite3``)."""
    if partition is not None:
        return (directory / f"part-{partition}.sqlite3").exists()
    return any(directory.glob("part-*.sqlite3"))


def recovery_partitions(directory: Path) -> dict[int, int]:
    """The bytewax recovery partitions in ``directory``: ``{index: count}``, as each file
    records them (bytewax's ``parts`` table); a file that cannot be read is left out."""
    out = {}
    for path in directory.glob("part-*.sqlite3"):
        try:
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
                for index, count in db.execute("SELECT part_index, part_count FROM parts"):
                    out[int(index)] = int(count)
        except sqlite3.Error:
            continue
    return out


def init_recovery(directory: Path, partition: int = 0, partitions: int = 1) -> Path:
    """Create and initialise a bytewax recovery directory unless it holds its partition
    already: a missing directory, or one without a ``part-*.sqlite3`` (a freshly mounted
    volume). With one partition, the same as ``mkdir -p DIR && python -m bytewax.recovery
    DIR 1``. Process ``partition`` of a cluster of ``partitions`` processes, each with its
    own directory, holds partition ``partition`` of ``partitions`` only (bytewax finds the
    others on the other processes); processes sharing one directory each add their own.

    Before a start, :func:`dataflows.recovery.prepare_recovery` does this and also refuses
    to start over silently where records were delivered before.

    :raises ValueError: ``partition`` is not below ``partitions``.
    """
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} of {partitions}: it must be 0 to {partitions - 1}")
    if partitions == 1 and not recovery_initialised(directory):
        from bytewax.recovery import init_db_dir

        directory.mkdir(parents=True, exist_ok=True)
        init_db_dir(directory, 1)
        _write_generation(directory / RECOVERY_GENERATION, uuid.uuid4().hex)  # a new store
    elif partitions > 1 and not recovery_initialised(directory, partition):
        from bytewax.recovery import init_db_dir

        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f".init-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            init_db_dir(staging, partitions)  # every partition knows the count; this one is kept
            for path in staging.glob(f"part-{partition}.sqlite3*"):  # with its -wal, should one be left
                os.replace(path, directory / path.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _write_generation(directory / RECOVERY_GENERATION, uuid.uuid4().hex, exclusive=True)
    return directory


#: The file in a recovery directory naming its store (see :func:`recovery_generation`).
RECOVERY_GENERATION = "factoryflow-generation"


def recovery_generation(directory: Path) -> str:
    """The id of the recovery store in ``directory``: made anew each time
    :func:`init_recovery` initialises one, the same across the runs that resume from it
    (made on first ask for a store initialised by hand). What a transmit keeps beside its
    output until the first snapshot (``localfile``) belongs to one generation.

    :raises OSError: the directory cannot be read or written.
    """
    path = directory / RECOVERY_GENERATION
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        _write_generation(path, uuid.uuid4().hex, exclusive=True)
        return path.read_text().strip()


def _write_generation(path: Path, generation: str, exclusive: bool = False) -> None:
    """Write ``generation`` to ``path`` durably (replacing it; ``exclusive``: unless another
    process just made it)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(generation + "\n")
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    if exclusive:
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        temporary.unlink()
    else:
        os.replace(temporary, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
