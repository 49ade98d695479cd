"""Running the real main job (``python -m bytewax.run dataflows.main:flow``) from tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dataflows.main import init_recovery

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def growing_csv(path: Path, every: float = 0.1) -> Iterator[None]:
    """``path`` (``n,written``) gets a row every ``every`` seconds until the block ends, as
    a line's PLC log grows: a live stream beside a fault."""
    path.write_text("n,written\n")
    stop = threading.Event()

    def write_rows() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            with path.open("a") as out:
                out.write(f"{n},{time.time()}\n")
            time.sleep(every)

    writer = threading.Thread(target=write_rows, daemon=True)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()


def gaps(counts: list[tuple[float, int]]) -> list[float]:
    """The seconds between changes of a sampled count (``(time.monotonic(), count)``), from
    its first non-zero sample; the last runs to the end of the sampling."""
    counts = counts[next(i for i, (_, count) in enumerate(counts) if count):]
    out, last = [], counts[0][0]
    for (_, before), (at, count) in zip(counts, counts[1:], strict=False):
        if count != before:
            out.append(at - last)
            last = at
    return [*out, counts[-1][0] - last]


def drain(reader: Any) -> list[Any]:
    """Every batch a stream reader has ready now: ``read()`` until it says no more are ready."""
    batches, more = reader.read()
    while more:
        new, more = reader.read()
        batches += new
    return batches


class FlowProcess:
    """One installation (``FACTORYFLOW_HOME``) whose dataflow is started, stopped and killed.

    Recovery is on (``-r <home>/recovery -s <snapshot> -b 0``), so restarts resume.
    """

    def __init__(self, home: Path, config: dict[str, Any], snapshot: int = 1, workers: int = 1) -> None:
        self.home = home
        self.snapshot = snapshot
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        (home / "conf.d").mkdir(parents=True, exist_ok=True)
        (home / "conf.d" / "config.json").write_text(json.dumps(config))
        init_recovery(home / "recovery")

    def start(self) -> None:
        """Start the dataflow in the background; its log goes to ``run-N.log``."""
        self.runs += 1
        log = open(self.home / f"run-{self.runs}.log", "wb")  # noqa: SIM115 - closed by the child
        env = {**os.environ, "FACTORYFLOW_HOME": str(self.home), "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflows.main:flow", "-r", str(self.home / "recovery"),
             "-s", str(self.snapshot), "-b", "0", "-w", str(self.workers)], env=env, cwd=self.home, stdout=log,
            stderr=log)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash or power loss would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def committed_epoch(self) -> int:
        """The last epoch bytewax committed a snapshot of (0 before the first; -1 while the
        recovery partition is busy)."""
        try:
            db = sqlite3.connect(f"file:{self.home / 'recovery' / 'part-0.sqlite3'}?mode=ro", uri=True, timeout=5)
            try:
                row = db.execute("SELECT MAX(commit_epoch) FROM commits").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return -1
        return row[0] or 0

    def log(self, run: int | None = None) -> str:
        """The log of run ``run`` (default: the latest)."""
        return (self.home / f"run-{run or self.runs}.log").read_text(errors="replace")

    def output(self, transmit: str, name: str) -> list[dict[str, Any]]:
        """Records the localfile transmit ``transmit`` wrote to ``name`` (``asset__type.jsonl``)."""
        path = self.home / "components" / transmit / name
        if not path.exists():
            return []
        lines = path.read_bytes().split(b"\n")
        return [json.loads(line) for line in lines if line.strip() and line.endswith(b"}")]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 120, what: str = "condition") -> None:
        """Poll ``condition`` until true; fail with the log if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"dataflow exited ({self.proc.returncode}) before {what}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-5000:]}")
            time.sleep(0.05)

    def close(self) -> None:
        """Kill the process if it still runs (tests stop what they start)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
