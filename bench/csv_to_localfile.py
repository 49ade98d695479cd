"""Throughput and peak memory of the main job: a big CSV file to the localfile transmit.

Replicates the NAB machine temperature series (shifting each copy past the last) to
``--rows`` rows, runs ``python -m bytewax.run dataflows.main:flow`` with a localfile
receiver, ``convert_timestamps`` (America/Chicago) and the localfile transmit, and
prints rows/s and the dataflow process's peak RSS.

    .venv/bin/python bench/csv_to_localfile.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataflows.ledger import Ledger, ledger_path  # noqa: E402

NAB = REPO / "data" / "nab" / "machine_temperature_system_failure.csv"


def make_csv(path: Path, rows: int) -> None:
    nab = pl.read_csv(NAB, try_parse_dates=True)
    span = nab["timestamp"].max() - nab["timestamp"].min() + (nab["timestamp"][1] - nab["timestamp"][0])
    copies = -(-rows // nab.height)
    frames = [nab.with_columns(pl.col("timestamp") + span * i) for i in range(copies)]
    pl.concat(frames).head(rows).write_csv(path, datetime_format="%Y-%m-%d %H:%M:%S")


def csv_receiver(directory: Path) -> dict[str, object]:
    """A localfile receiver of every CSV in ``directory``, as stream ``machine:temperature``."""
    return {"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 1,
            "connections": [{"data_directory": str(directory)}],
            "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
            "streams": [{"asset": "machine", "stream_type": "temperature"}]}


PLANT_TIME = {"transform_name": "tz", "transform_type": "convert_timestamps",
              "field_names": ["timestamp"], "timezone": "America/Chicago"}


def run_until_delivered(home: Path, config: dict[str, object], transmit: str, rows: int) -> tuple[float, float]:
    """Run the main job on ``config`` until ``transmit`` has delivered ``rows`` records of
    ``machine:temperature`` (per the ledger), then stop it with SIGTERM.

    :returns: (seconds from process start to the last delivery, peak RSS of the dataflow in MB).
    """
    (home / "conf.d").mkdir(exist_ok=True)
    (home / "conf.d" / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "FACTORYFLOW_HOME": str(home), "PYTHONPATH": str(REPO),
           "FACTORYFLOW_LOG_LEVEL": "WARNING"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.main:flow"], env=env, cwd=home)
    delivered, ledger = 0, None
    while delivered < rows:  # the transmit counts durable deliveries in the ledger
        time.sleep(0.2)
        if ledger is None and ledger_path(home).exists():
            ledger = Ledger(ledger_path(home))
        if ledger is not None:
            delivered = ledger.progress(transmit, "machine:temperature")[0]
        if proc.poll() is not None:
            raise SystemExit(f"dataflow exited with {proc.returncode}")
    elapsed = time.perf_counter() - start
    if ledger is not None:
        ledger.close()
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    return elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="factoryflow-bench-") as tmp:
        home = Path(tmp)
        (home / "in").mkdir()
        make_csv(home / "in" / "big.csv", args.rows)
        size = (home / "in" / "big.csv").stat().st_size
        config = {"data_receiver": [csv_receiver(home / "in")], "transforms": [PLANT_TIME],
                  "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}]}
        elapsed, peak_mb = run_until_delivered(home, config, "local", args.rows)
        print(f"rows: {args.rows:,} ({size / 1e6:.1f} MB of CSV)")
        print(f"elapsed: {elapsed:.2f} s (process start to last record on disk)")
        print(f"throughput: {args.rows / elapsed:,.0f} rows/s")
        print(f"peak RSS of the dataflow: {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
