"""The control API under load: ``GET /v1/streams`` and ``GET /v1/status`` from 200 concurrent
clients, against ``python -m api`` serving an installation of 1,000 streams whose ledger
holds a long run's counts and markers; beside them, the same server answering a static
file of the UI (no ledger, no config): the floor of uvicorn and Litestar on this machine.

Each figure: requests answered per second over ``seconds``, p50 and p99 latency, the API
process's CPU seconds and peak RSS; any request not answered 200 (a refused or closed
connection included) is counted in the note. The clients are threads of this process, on
the same cores as the server.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import REPO, Measure, PeakSampler, finish
from dataflows.ledger import Ledger, Marker, ledger_path

CLIENTS = 200
STREAMS = 1000
#: The UI's stylesheet: a file the server sends without reading the ledger or the config.
FLOOR = "/ui/style.css"


def installation(home: Path, streams: int = STREAMS) -> None:
    """A home whose config has ``streams`` streams over 10 receivers and two transmits, and
    whose ledger holds a delivery count per stream and transmit and an error marker on
    every tenth stream."""
    receivers = [{"data_receiver_name": f"line_{r}", "protocol": "localfile", "poll_interval": 1,
                  "connections": [{"data_directory": str(home / "in")}],
                  "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                  "streams": [{"asset": f"machine_{r}_{s}", "stream_type": "csv", "parser": "csv",
                               "file_filter": [f"m{r}_{s}.csv"]} for s in range(streams // 10)]}
                 for r in range(10)]
    transmits = [{"transmit_name": "local", "transmit_type": "localfile"},
                 {"transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": "127.0.0.1:9092",
                  "topic": "plant"}]
    (home / "conf.d").mkdir(parents=True)
    (home / "conf.d" / "config.json").write_text(json.dumps(
        {"data_receiver": receivers, "transforms": [], "data_transmit": transmits}))
    ledger = Ledger(ledger_path(home))
    try:
        for r in range(10):
            for s in range(streams // 10):
                stream = f"machine_{r}_{s}:csv"
                ledger.record_received(f"line_{r}", stream, 50_000)
                for transmit in ("local", "kafka"):
                    ledger.record_delivery(transmit, stream, 50_000, "2026-12-06T10:00:00.000000Z")
                if s % 10 == 0:
                    ledger.set_marker(Marker(component=f"line_{r}", component_type="Receiver",
                                             asset=f"machine_{r}_{s}", stream_type="csv", category="parse",
                                             timestamp="2026-12-06 10:00:00.000000", level="error",
                                             message=f"m{r}_{s}.csv row 7: not a number"))
        ledger.mark_success("local")
        ledger.mark_error("kafka", "the broker 127.0.0.1:9092 has acknowledged none of 40 messages for 10 s")
    finally:
        ledger.close()


def _load(port: int, path: str, seconds: float, clients: int) -> tuple[list[float], list[str], float]:
    """``clients`` threads, each on its own kept-alive connection (``http.client``: little
    Python per request, so the clients cost the machine less than the server), asking
    ``path`` in a loop for ``seconds``: (latencies in s of the 200 answers, what each failed
    request got, wall seconds)."""
    latencies: list[float] = []
    failed: list[str] = []
    started = time.perf_counter()
    deadline = started + seconds

    def one() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < deadline:
            asked = time.perf_counter()
            try:
                connection.request("GET", path)
                answer = connection.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException) as exc:
                failed.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            if answer.status == 200:
                latencies.append(time.perf_counter() - asked)
            else:
                failed.append(f"HTTP {answer.status}")
        connection.close()

    threads = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failed, time.perf_counter() - started


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def api_under_load(work: Path, seconds: float = 15.0) -> list[tuple[str, Measure]]:
    """Start the API on an installation of :data:`STREAMS` streams and load each path in
    turn: ``[(row name, measure)]``, the floor first."""
    from tests.services.process import free_port

    home = work / "api-home"
    installation(home)
    port = free_port()
    env = {**os.environ, "FACTORYFLOW_HOME": str(home), "PYTHONPATH": str(REPO), "FACTORYFLOW_LOG_LEVEL": "WARNING"}
    log = open(home / "api.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "api", "--no-start", "--port", str(port)], cwd=home, env=env,
                            stdout=log, stderr=log)
    log.close()
    sampler = PeakSampler([proc.pid])
    rows: list[tuple[str, Measure]] = []
    try:
        _wait(port, proc, home)
        for name, path in ((f"limit: GET {FLOOR}", FLOOR), ("API: GET /v1/status", "/v1/status"),
                           ("API: GET /v1/streams", "/v1/streams")):
            cpu_before = _cpu(proc.pid)
            latencies, failed, took = _load(port, path, seconds, CLIENTS)
            rows.append((f"{name}, {CLIENTS} clients", Measure(
                len(latencies), took, _cpu(proc.pid) - cpu_before, sampler.peak(proc.pid),
                p50_ms=_percentile(latencies, 0.5) * 1000, p99_ms=_percentile(latencies, 0.99) * 1000,
                note=f"{STREAMS:,} streams, {len(failed)} not answered 200"
                     + (f": {sorted(set(failed))[:3]}" if failed else ""))))
    finally:
        sampler.stop()
        proc.send_signal(signal.SIGTERM)
        finish(proc.pid)
        proc.returncode = 0
    return rows


def _cpu(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _wait(port: int, proc: subprocess.Popen[bytes], home: Path, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited: {(home / 'api.log').read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{FLOOR}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not answer in 60 s")


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.api``: print the rows (a quick look without the full bench)."""
    import tempfile

    seconds = float((argv or sys.argv[1:] or ["15"])[0])
    with tempfile.TemporaryDirectory(prefix="factoryflow-bench-api-") as work:
        for name, m in api_under_load(Path(work), seconds):
            print(f"{name}: {m.rate:,.0f} requests/s, p50 {m.p50_ms:.0f} ms, p99 {m.p99_ms:.0f} ms, "
                  f"CPU {m.cpu:.1f} s, peak RSS {m.peak_mb:.0f} MB ({m.note})", flush=True)


if __name__ == "__main__":
    main()



