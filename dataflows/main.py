"""The main job: ``python -m bytewax.run dataflows.main:flow``.

Runs the config at ``$FACTORYFLOW_CONFIG`` (default ``$FACTORYFLOW_HOME/conf.d/config.json``,
with ``FACTORYFLOW_HOME`` defaulting to ``./.factoryflow``). Logs go to stderr and to
``$FACTORYFLOW_HOME/log/factorytx_core.log`` in FactoryTX's line format
(``2017-11-09 23:18:05,699 <thread> <component> INFO <message>``), with the config's
secrets replaced by ``********``; the level is ``$FACTORYFLOW_LOG_LEVEL`` (default INFO).

With recovery (``-r DIR -s SECONDS -b 0``; create DIR first with ``mkdir DIR &&
python -m bytewax.recovery DIR 1``) each stream resumes from its last snapshot.

SIGTERM or SIGINT stops it gracefully: each stream finishes the batch in hand, bytewax
takes a final snapshot and the process exits 0. A second signal interrupts at once.
An invalid config logs every violation and exits with status 2.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from bytewax.dataflow import Dataflow

from dataflows.config import ConfigError, load_file, read_document
from dataflows.flow import build_flow
from dataflows.home import CORE_LOG, config_path, home_dir, init_recovery, log_dir
from dataflows.sdk import RunContext
from dataflows.secrets import RedactingFilter

__all__ = ["LOG_FORMAT", "config_path", "configure_logging", "flow", "home_dir", "init_recovery",
           "install_signal_handlers"]

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


def install_signal_handlers(shutdown: threading.Event) -> None:
    """First SIGTERM/SIGINT: set ``shutdown`` (graceful stop); a second one: interrupt now."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if shutdown.is_set():
            raise KeyboardInterrupt
        _log.info("%s received: stopping after the batches in hand", signal.Signals(signum).name)
        shutdown.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def flow() -> Dataflow:
    """Build the dataflow for the configured installation (called by ``bytewax.run``).

    :raises SystemExit: status 2 when the config is missing or invalid.
    """
    home = home_dir()
    redacting = configure_logging(home)
    shutdown = threading.Event()
    install_signal_handlers(shutdown)
    path = config_path(home)
    try:
        config = load_file(path)
    except ConfigError as exc:
        for violation in exc.violations:
            _log.error("config %s at %s: %s", path, violation.json_path, violation.description)
        raise SystemExit(2) from None
    redacting.use(read_document(path))
    streams = sum(len(r.stream_list) for r in config.data_receiver)
    _log.info("config %s: %d receivers with %d streams, %d transforms, %d transmits; home %s", path,
              len(config.data_receiver), streams, len(config.transforms), len(config.data_transmit), home)
    return build_flow(config, RunContext(home=home, shutdown=shutdown))
