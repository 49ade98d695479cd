"""Supervision of the dataflow process for ``POST /v1/ftx/start|stop|restart``.

The dataflow runs as a child process, ``python -m bytewax.run dataflows.main:flow -r
<home>/recovery -s <snapshot_interval> -b 0``, with ``FACTORYFLOW_HOME`` set, so every
stream resumes from its last snapshot. Its console output (tracebacks the log may not
hold) goes to ``<home>/log/dataflow-console.log``; its log proper is
``<home>/log/factorytx_core.log``.

- ``start`` checks first that the saved config can run (it refuses with the violations
  otherwise), stops a dataflow an earlier, killed API process left running on the same
  home (``state/dataflow.pid``), makes the recovery directory ready (refusing, with one
  line, where records were delivered before and the state is gone:
  :mod:`dataflows.recovery`), then launches the child.
- ``stop`` is graceful: SIGTERM (each stream finishes its batch, bytewax takes a final
  snapshot, the child exits 0), then SIGKILL if the child is still alive after
  ``stop_timeout`` seconds. The child runs in a process group of its own, so a Ctrl-C
  in the API's terminal (SIGINT to the terminal's foreground group) reaches only the
  API, whose shutdown stops the child with that one SIGTERM: a second signal would stop
  it at once, before its final snapshot.
- A child that exits without being asked to is a crash: it is logged with its exit
  status and the tail of its console output, ``status`` reads ``failed``, and it is
  started again after a backoff that doubles per consecutive crash (1 s, 2 s, 4 s ...
  capped at ``max_backoff``; a run longer than ``max_backoff`` resets it).

Implements ``/v1/ftx/start``, ``/v1/ftx/stop``, ``/v1/ftx/restart`` and
``factorytx.status`` of ``/v1/status`` in ``shared/specs/factorytx-rest-api.txt``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil

from dataflows.backoff import Backoff
from dataflows.config import ConfigError, Violation, load_file
from dataflows.home import CONSOLE_LOG, config_path, log_dir, pid_path, recovery_dir
from dataflows.recovery import preflight, prepare_recovery

Status = Literal["running", "stopped", "failed"]
REPO = Path(__file__).resolve().parents[1]
_log = logging.getLogger("api.supervisor")


class CannotStart(RuntimeError):
    """The saved config cannot run; ``violations`` says why."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__("; ".join(map(str, violations)))


class Supervisor:
    """Runs and watches the dataflow of the installation at ``home``.

    :param stop_timeout: seconds between SIGTERM and SIGKILL on stop.
    :param snapshot_interval: bytewax's ``-s``: seconds between recovery snapshots.
    :param max_backoff: longest wait before restarting a crashed dataflow, in seconds.
    """

    def __init__(self, home: Path, *, stop_timeout: float = 30.0, snapshot_interval: float = 5.0,
                 max_backoff: float = 60.0) -> None:
        self.home = home
        self.stop_timeout = stop_timeout
        self.snapshot_interval = snapshot_interval
        self.max_backoff = max_backoff
        self._lock = threading.RLock()
        self._wanted = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at: float | None = None
        self._crashes = 0
        self._restarts = 0
        self._last_exit: dict[str, Any] | None = None
        self._last_error: str | None = None
        self._wake = threading.Event()
        self._watcher: threading.Thread | None = None
        self._action: str | None = None  # "starting", "stopping", "restarting" while one runs

    # -- state

    @property
    def config_path(self) -> Path:
        """Where the dataflow reads its config."""
        return config_path(self.home)

    @property
    def status(self) -> Status:
        """``running`` (the child is alive), ``stopped`` (not wanted), or ``failed`` (wanted
        but not running: crashed and waiting to restart, or its config cannot run)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return "running"
            return "failed" if self._wanted else "stopped"

    @property
    def wanted(self) -> bool:
        """Whether the dataflow should be running (started and not stopped since)."""
        return self._wanted

    def info(self) -> dict[str, Any]:
        """Details for ``/v1/status``: what a request is doing to the dataflow now
        (``action``: ``starting``, ``stopping``, ``restarting`` or None), pid, start time
        (ISO UTC), restarts after crashes, the last unexpected exit and the last error."""
        with self._lock:
            alive = self._proc is not None and self._proc.poll() is None
            return {
                "action": self._action,
                "pid": self._proc.pid if alive and self._proc else None,
                "started_at": _iso(self._started_at) if alive else None,
                "crash_restarts": self._restarts,
                "last_exit": self._last_exit,
                "last_error": self._last_error,
            }

    # -- control

    def start(self, fresh_state: bool = False) -> Status:
        """Start the dataflow unless it runs; returns the status.

        :param fresh_state: start over although records were delivered before and the
            recovery state is gone (:func:`dataflows.recovery.refusal`).
        :raises CannotStart: the saved config is missing or cannot run, a state file is
            damaged, or the recovery state is gone (without ``fresh_state``).
        """
        with self._lock:
            self._wanted = True
            if self.status == "running":
                return "running"
            self._wake.set()  # a watcher waiting to restart: let it go now
            self._action = self._action or "starting"
            try:
                self._launch(fresh_state)
            finally:
                self._action = None
            return self.status

    def stop(self) -> Status:
        """Stop the dataflow gracefully (SIGTERM, then SIGKILL after ``stop_timeout``)."""
        with self._lock:
            self._wanted = False
            self._wake.set()
            proc = self._proc
            self._action = self._action or "stopping"
        try:
            self._stop(proc)
        finally:
            if self._action == "stopping":
                self._action = None
        return self.status

    def _stop(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None and proc.poll() is None:
            _log.info("stopping the dataflow (pid %d)", proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(self.stop_timeout)
                _log.info("dataflow stopped (exit status %d)", code)
            except subprocess.TimeoutExpired:
                _log.warning("dataflow still running %.0f s after SIGTERM: killing it", self.stop_timeout)
                proc.kill()
                proc.wait()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(10)

    def restart(self) -> Status:
        """Stop, then start (``action`` reads ``restarting`` throughout).

        :raises CannotStart: the saved config is missing or cannot run.
        """
        self._action = "restarting"
        try:
            self.stop()
            return self.start()
        finally:
            self._action = None

    def close(self) -> None:
        """Stop the dataflow (at API shutdown)."""
        self.stop()

    # -- internals

    def _check_config(self) -> None:
        try:
            load_file(self.config_path)
        except ConfigError as exc:
            self._last_error = f"config {self.config_path} cannot run: {exc}"
            raise CannotStart(exc.violations) from None

    def _stop_orphan(self) -> None:
        """Stop a dataflow an earlier API process left running on this home (it was killed
        without stopping its child): two dataflows must never share one recovery store."""
        try:
            pid = int(pid_path(self.home).read_text())
            orphan = psutil.Process(pid)
            ours = "dataflows.main:flow" in orphan.cmdline() and Path(orphan.cwd()) == self.home
        except (OSError, ValueError, psutil.Error):
            return
        if not ours or (self._proc is not None and self._proc.pid == pid):
            return
        _log.warning("a dataflow (pid %d) from an earlier API process still runs on %s: stopping it",
                     pid, self.home)
        orphan.terminate()
        try:
            orphan.wait(self.stop_timeout)
        except psutil.TimeoutExpired:
            orphan.kill()
            orphan.wait(10)

    def _launch(self, fresh_state: bool = False) -> None:
        self._check_config()
        self._stop_orphan()
        logs = log_dir(self.home)
        logs.mkdir(parents=True, exist_ok=True)
        checked = preflight(self.home, recovery_dir(self.home), fresh_state=fresh_state)
        for line in checked.rebuilt:
            _log.warning("%s", line)
        if checked.refused:  # a damaged file, or lost state (FACTORYFLOW_FRESH_STATE=1 starts over)
            self._last_error = " ".join(checked.refused)
            raise CannotStart([Violation(line, [], "error") for line in checked.refused])
        recovery = prepare_recovery(self.home, recovery_dir(self.home), fresh_state=fresh_state)
        console = open(logs / CONSOLE_LOG, "ab")  # noqa: SIM115 - the child holds it
        console.write(f"--- dataflow start {_iso(time.time())}\n".encode())
        console.flush()
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "FACTORYFLOW_HOME": str(self.home), "PYTHONPATH": pythonpath}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bytewax.run", "dataflows.main:flow", "-r", str(recovery),
                 "-s", f"{self.snapshot_interval:g}", "-b", "0"],
                cwd=self.home, env=env, stdout=console, stderr=subprocess.STDOUT,
                process_group=0)  # a terminal's Ctrl-C is the API's to handle: one SIGTERM
        finally:
            console.close()
        self._proc = proc
        pid_path(self.home).parent.mkdir(parents=True, exist_ok=True)
        pid_path(self.home).write_text(str(proc.pid))
        self._started_at = time.time()
        self._last_error = None
        self._wake.clear()
        _log.info("dataflow started (pid %d), config %s", proc.pid, self.config_path)
        self._watcher = threading.Thread(target=self._watch, args=(proc,), name="Supervisor",
                                         daemon=True)
        self._watcher.start()

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        with self._lock:
            if self._proc is not proc or not self._wanted:
                return  # stopped on request
            ran = time.time() - (self._started_at or time.time())
            self._crashes = 1 if ran > self.max_backoff else self._crashes + 1
            self._last_exit = {"exit_status": code, "at": _iso(time.time()), "ran_seconds": round(ran, 1)}
            policy = Backoff(initial=1.0, maximum=self.max_backoff, jitter=0.0)
            attempt = self._crashes
            delay = policy.delay(attempt)
            _log.error("dataflow exited unexpectedly (exit status %d after %.1f s); restarting in "
                       "%.0f s. Last console lines:\n%s", code, ran, delay, self._console_tail())
        while True:
            if self._wake.wait(delay):
                return  # stopped or started by a request meanwhile
            with self._lock:
                if not self._wanted or self._proc is not proc:
                    return
                try:
                    self._restarts += 1
                    self._launch()
                    return
                except CannotStart as exc:
                    _log.error("dataflow cannot restart: %s; trying again in %.0f s", exc, delay)
                    attempt += 1
                    delay = policy.delay(attempt)

    def _console_tail(self, lines: int = 20) -> str:
        path = log_dir(self.home) / CONSOLE_LOG
        try:
            text = path.read_bytes()[-20_000:].decode(errors="replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
