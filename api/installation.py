"""The installation the control API serves: its home, config file, supervisor and locks,
provided to the controllers as Litestar dependencies."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from litestar.di import NamedDependency

from api.rates import RecordRates
from api.supervisor import Supervisor
from dataflows.config import Config, ConfigError, Violation, load, read_document, validate
from dataflows.control import ControlStore, control_path
from dataflows.home import log_dir
from dataflows.ledger import Ledger, ledger_path
from dataflows.secrets import RedactingFilter, restore_secrets

#: Longest a ``/v1/status`` or ``/v1/streams`` answer is reused, in seconds.
ANSWER_SECONDS = 1.0


class Installation:
    """The state the endpoints share: the home, the supervisor, the config lock.

    :param home: ``$FACTORYFLOW_HOME``.
    :param restream_timeout: seconds ``POST /v1/restream`` waits for every stream's
        acknowledgement before answering 500.
    :param redacting: the web log's secret filter, kept in step with the saved config.
    :param rates: the records-per-minute history (:mod:`api.rates`) the app samples.
    """

    def __init__(self, home: Path, supervisor: Supervisor, restream_timeout: float,
                 redacting: RedactingFilter | None, rates: RecordRates | None = None) -> None:
        self.home = home
        self.supervisor = supervisor
        self.restream_timeout = restream_timeout
        self.config_lock = threading.Lock()
        self.redacting = redacting or RedactingFilter()
        self.rates = rates or RecordRates()
        self._locks_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}  # one per cached thing: one computes, others wait
        self._config: tuple[tuple[int, int, int], Config | None] | None = None
        self._answers: dict[str, tuple[float, Any]] = {}

    @property
    def config_path(self) -> Path:
        """Where the config is saved (the dataflow reads the same file)."""
        return self.supervisor.config_path

    @property
    def log_dir(self) -> Path:
        """Where the log files are."""
        return log_dir(self.home)

    def document(self) -> Any | None:
        """The saved config document, or None when there is none.

        :raises ConfigError: unreadable or not JSON.
        """
        if not self.config_path.exists():
            return None
        return read_document(self.config_path)

    def check(self, document: Any) -> tuple[Any, list[Violation]]:
        """``document`` with its ``"********"`` secrets restored from the saved config, and
        every violation of the result (the restore's and validation's)."""
        try:
            stored = self.document()
        except ConfigError:
            stored = None
        document, violations = restore_secrets(document, stored)
        return document, violations + validate(document)

    def config(self) -> Config | None:
        """The saved config, typed (placeholders allowed), or None when missing or invalid.

        Read and validated again only when the file changed (its size, mtime or inode):
        ``/v1/status`` and ``/v1/streams`` ask for it on every request."""
        try:
            stat = self.config_path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock("config"):
            if self._config is not None and self._config[0] == key:
                return self._config[1]
            try:
                document = self.document()
                config = None if document is None else load(document, runnable=False)
            except ConfigError:
                config = None
            self._config = (key, config)
            return config

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(name, threading.Lock())

    def answer(self, name: str, compute: Callable[[], Any]) -> Any:
        """The answer ``compute`` gives, computed at most once per :data:`ANSWER_SECONDS`
        whatever the number of clients asking (one computes, the others wait for it): what
        ``/v1/status`` and ``/v1/streams`` read from the ledger is then at most that old.
        Saving a config forgets every answer."""
        with self._lock(f"answer:{name}"):
            kept = self._answers.get(name)
            if kept is not None and time.monotonic() - kept[0] < ANSWER_SECONDS:
                return kept[1]
            value = compute()
            self._answers[name] = (time.monotonic(), value)
            return value

    def save(self, document: Any) -> None:
        """Write ``document`` atomically (temp file, fsync, rename, fsync of the directory)."""
        path = self.config_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.redacting.use(document)
        self._answers.clear()

    def ledger(self) -> Ledger:
        """A new connection to the installation's ledger; close it after use."""
        return Ledger(ledger_path(self.home))

    def control(self) -> ControlStore:
        """A new connection to the installation's control store; close it after use."""
        return ControlStore(control_path(self.home))


#: Handler parameters provided by the app: the installation, a ledger and a control store.
Inst = NamedDependency[Installation]
LedgerConnection = NamedDependency[Ledger]
ControlConnection = NamedDependency[ControlStore]


def provide_ledger(inst: Inst) -> Iterator[Ledger]:
    """Dependency: a ledger connection for one request, closed after it."""
    ledger = inst.ledger()
    try:
        yield ledger
    finally:
        ledger.close()


def provide_control(inst: Inst) -> Iterator[ControlStore]:
    """Dependency: a control-store connection for one request, closed after it."""
    store = inst.control()
    try:
        yield store
    finally:
        store.close()
