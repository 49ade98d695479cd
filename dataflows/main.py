"""The main job: ``python -m bytewax.run dataflows.main:flow``.

Runs the config at ``$FACTORYFLOW_CONFIG`` (default ``$FACTORYFLOW_HOME/conf.d/config.json``,
with ``FACTORYFLOW_HOME`` defaulting to ``./.factoryflow``). Logs go to stderr and to
``$FACTORYFLOW_HOME/log/factorytx_core.log`` in FactoryTX's line format
(``2017-11-09 23:18:05,699 <thread> <component> INFO <message>``), with the config's
secrets replaced by ``********``; the level is ``$FACTORYFLOW_LOG_LEVEL`` (default INFO).

With recovery (``-r DIR -s SECONDS -b 0``; create DIR first with ``mkdir DIR &&
python -m bytewax.recovery DIR 1``) each stream resumes from its last snapshot.

SIGTERM or SIGINT stops it gracefully: each stream finishes the batch in hand, bytewax
takes a final snapshot, one line logs the records delivered per stream, and the process
exits 0. A second signal interrupts at once. An invalid config logs every violation and
exits with status 2; so does a recovery directory that does not exist, in one line
naming the command that fixes it. ``python -m dataflows run`` initialises it for you, and
an existing directory without state (a freshly mounted volume) is initialised here, unless
the installation delivered records before and its state is gone
(:mod:`dataflows.recovery`: one line, exit 2). Without ``-r`` no state is kept: a warning
says so.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import shutil
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import FrameType

from bytewax.dataflow import Dataflow

from dataflows.config import Config, ConfigError, load_file, read_document
from dataflows.context import READ_WAIT
from dataflows.diskspace import DiskGuard, floor_of
from dataflows.flow import build_flow
from dataflows.home import CORE_LOG, config_path, home_dir, init_recovery, ledger_path, log_dir
from dataflows.ledger import Ledger
from dataflows.recovery import preflight, prepare_recovery
from dataflows.sdk import RunContext
from dataflows.secrets import RedactingFilter
from dataflows.timer_slack import configured_seconds, set_timer_slack

__all__ = ["LOG_FORMAT", "Stop", "config_path", "configure_logging", "flow", "home_dir", "init_recovery",
           "install_signal_handlers", "log_summary", "recovery_argument"]

LOG_FORMAT = "%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"
_log = logging.getLogger("factoryflow")


def configure_logging(home: Path, filename: str = CORE_LOG) -> RedactingFilter:
    """Log to stderr and to ``<home>/log/<filename>`` (10 MB x 5 files) in the FactoryTX
    line format.

    :returns: the filter that scrubs secrets from every line; set its ``secrets``.
    """
    log_dir(home).mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(LOG_FORMAT)
    redacting = RedactingFilter()
    root = logging.getLogger()
    root.setLevel(os.environ.get("FACTORYFLOW_LOG_LEVEL", "INFO").upper())
    for handler in (logging.StreamHandler(),
                    logging.handlers.RotatingFileHandler(log_dir(home) / filename,
                                                         maxBytes=10_000_000, backupCount=5)):
        handler.setFormatter(formatter)
        handler.addFilter(redacting)
        root.addHandler(handler)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    return redacting


class Stop:
    """Why the job stops: set by the first SIGTERM/SIGINT (see :func:`install_signal_handlers`).

    :ivar event: set when the dataflow should stop gracefully.
    :ivar signal: the name of the signal that asked, or None.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: str | None = None


def install_signal_handlers(stop: Stop) -> None:
    """First SIGTERM/SIGINT: set ``stop.event`` (graceful stop); a second one: exit at once
    with status 128 + the signal number (nothing is lost: what was read since the last
    snapshot is read again)."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.event.is_set():  # asked twice: stop now, without a traceback
            _log.warning("%s received again: stopping at once; what was read since the last snapshot "
                         "is read again at the next start", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(128 + signum)
        stop.signal = signal.Signals(signum).name
        _log.info("%s received: stopping after the batches in hand", stop.signal)
        stop.event.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def log_summary(home: Path, what: str) -> None:
    """Log one line: ``<what>: records delivered per stream: <transmit>: <stream> N, ...``."""
    ledger = Ledger(ledger_path(home))
    try:
        _log.info("%s: records delivered per stream: %s", what, ledger.delivery_summary())
    finally:
        ledger.close()


def recovery_argument(argv: list[str]) -> Path | None:
    """The recovery directory named by ``-r``/``--recovery-directory`` in a ``bytewax.run``
    command line, or None."""
    for index, arg in enumerate(argv):
        if arg in ("-r", "--recovery-directory") and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith("--recovery-directory="):
            return Path(arg.split("=", 1)[1])
    return None


def _runs_bytewax(argv: list[str]) -> bool:
    """Whether this process is ``python -m bytewax.run ...`` (``factoryflow run`` passes its
    recovery directory itself)."""
    return bool(argv) and argv[0].replace("\\", "/").endswith("bytewax/run.py")


def flow(recovery: Path | None = None) -> Dataflow:
    """Build the dataflow for the configured installation (called by ``bytewax.run``).

    With ``-r DIR`` it first runs the checks of every start
    (:func:`dataflows.recovery.preflight`: a damaged ledger is rebuilt) and makes the
    recovery directory ready (:func:`dataflows.recovery.prepare_recovery`).

    It first sets the timer slack its threads inherit (:mod:`dataflows.timer_slack`,
    ``FACTORYFLOW_TIMER_SLACK``: bytewax's idle worker wakes every millisecond). Before
    the dataflow is built it waits while a volume the job writes is below its
    free-space floor (:mod:`dataflows.diskspace`; bytewax's first writes to a full
    recovery volume would panic), saying so every 30 s, and warns of a transmit's disk
    budget over its volume (:func:`check_budgets`).

    :param recovery: the recovery directory ``factoryflow run`` checked and readies itself;
        None: ``bytewax.run``'s ``-r``, checked here.

    :raises SystemExit: status 2 when the config is missing or invalid, a state file is
        damaged (one line each, naming the command that moves it aside), or the recovery
        state is missing where records were delivered before (one line).
    """
    home = home_dir()
    redacting = configure_logging(home)
    set_timer_slack(configured_seconds())  # before the worker (and any thread) starts: idle wake-ups
    checked_by_caller = recovery is not None
    recovery = recovery or recovery_argument(sys.argv)
    if recovery is not None and not checked_by_caller:  # bytewax.run -r DIR
        if not recovery.is_dir():
            print(f"factoryflow: the recovery directory {recovery} is not initialised: run the job with "
                  f"`python -m dataflows run` (it initialises it), or first "
                  f"`mkdir -p {recovery} && python -m bytewax.recovery {recovery} 1`", file=sys.stderr)
            raise SystemExit(2)
        checked = preflight(home, recovery)
        for line in checked.rebuilt:
            _log.warning("%s", line)
        for line in checked.refused:
            _log.error("%s", line)
        if checked.refused:
            raise SystemExit(2)
        prepare_recovery(home, recovery)  # an empty directory (a fresh volume) is initialised
    stop = Stop()
    install_signal_handlers(stop)
    path = config_path(home)
    try:
        config = load_file(path)
    except ConfigError as exc:
        for violation in exc.violations:
            _log.error("config %s: %s", path, violation)
        raise SystemExit(2) from None
    redacting.use(read_document(path))
    streams = sum(len(r.stream_list) for r in config.data_receiver)
    _log.info("config %s: %d receivers with %d streams, %d transforms, %d transmits; home %s", path,
              len(config.data_receiver), streams, len(config.transforms), len(config.data_transmit), home)
    if _runs_bytewax(sys.argv) and recovery_argument(sys.argv) is None:
        _log.warning("no recovery directory (-r): no state is kept, so a restart reads every source "
                     "from the start again; run `factoryflow run`, or bytewax.run with -r DIR")
    atexit.register(lambda: log_summary(home, f"stopped on {stop.signal}" if stop.signal else "stopped"))
    ctx = RunContext(home=home, shutdown=stop.event, read_wait=READ_WAIT, recovery=recovery)
    ctx = replace(ctx, disk=DiskGuard(ctx.written_directories))
    check_budgets(ctx, config)
    # bytewax's first writes to a full recovery volume would fail (a Rust panic)
    ctx.disk.wait_while_low(stop.event, _log, "the job starts once there is space")
    return build_flow(config, ctx)


#: The config keys of a transmit's disk budget (its outbox or spool), in bytes.
BUDGET_KEYS = ("outbox_max_bytes", "spool_max_bytes")


def check_budgets(ctx: RunContext, config: Config) -> list[str]:
    """At start: a warning for each transmit whose disk budget exceeds what the volume of
    its directory can hold over its floor (the floor then bounds it: the receivers wait
    before the volume fills). Returns the warnings, logged as they are found."""
    warnings = []
    for transmit in config.data_transmit:
        for key in BUDGET_KEYS:
            budget = getattr(transmit, key, None)
            if not isinstance(budget, int):
                continue
            directory = ctx.component_dir(transmit.transmit_name)
            where = directory if directory.is_dir() else ctx.home
            usage = shutil.disk_usage(where)
            room = max(0, usage.total - floor_of(usage.total))
            if budget > room:
                warnings.append(f"{transmit.transmit_name}: {key} is {budget / 1e6:.0f} MB but the volume of "
                                f"{where} holds {usage.total / 1e6:.0f} MB ({room / 1e6:.0f} MB over its free-space "
                                f"floor): when the volume reaches the floor the receivers wait")
                _log.warning("%s", warnings[-1])
    return warnings
