"""Fixed start-up of the main job: what factoryflow costs before its first record.

Figures, each the median of ``--runs`` fresh processes:

- **first record**: seconds from spawning ``python -m bytewax.run dataflows.main:flow``
  on a small CSV to the first record on disk in the ``localfile`` transmit's output;
- **floor**, measured in the same run: a bare interpreter importing bytewax and polars,
  which no collector built on them can go below;
- **fixed start-up** (the target, at most 0.3 s): first record minus the floor, i.e.
  what factoryflow itself adds before its first record;
- **config load**: seconds an interpreter that has bytewax and polars spends importing
  ``dataflows.main``, loading every component module through the registry, validating a
  config naming a SQL receiver and the Kafka and Sight Machine transmits, and building
  the flow, with the client libraries that loaded on the way (SQLAlchemy,
  confluent-kafka, httpx, pymongo's bson, fsspec load only when their component runs).

``--before DIR`` measures the same in another checkout (e.g. a ``git worktree`` of an
older commit) and prints it beside today's figures.

    .venv/bin/python bench/startup.py
    git worktree add /tmp/before <rev> && .venv/bin/python bench/startup.py --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.3  # seconds of fixed start-up

CONFIG = {
    "data_receiver": [
        {"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 1,
         "connections": [{"data_directory": "DATA"}],
         "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
         "streams": [{"asset": "machine", "stream_type": "temperature"}]},
    ],
    "transforms": [{"transform_name": "tz", "transform_type": "convert_timestamps",
                    "field_names": ["timestamp"], "timezone": "America/Chicago"}],
    "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}],
}
#: Components whose clients must not load with the config: a SQL receiver, Kafka, Sight Machine.
HEAVY = {
    "data_receiver": [{"data_receiver_name": "db", "protocol": "sql",
                       "connections": [{"database_type": "postgresql", "host": "127.0.0.1",
                                        "port": 5432, "database_name": "x"}],
                       "streams": [{"asset": "a", "stream_type": "b", "query": "SELECT 1"}]}],
    "transforms": [],
    "data_transmit": [{"transmit_name": "kafka", "transmit_type": "kafka",
                       "bootstrap_servers": "127.0.0.1:9", "topic": "t"},
                      {"transmit_name": "sm", "transmit_type": "remotedatapost",
                       "base_url": "http://127.0.0.1:9", "API_key_ID": "k", "API_key": "s"}],
}
FIXED = """
import sys, time
import bytewax.dataflow, bytewax.inputs, bytewax.operators, bytewax.outputs, bytewax.run, polars
start = time.perf_counter()
import dataflows.main
from dataflows.config import load
try:
    from dataflows.registry import load_all
except ImportError:  # before the SDK: the registry lived with the connectors
    from connectors.registry import load_all
from dataflows.flow import build_flow
from dataflows.runtime import RunContext
load_all()
config = load(CONFIG, runnable=False, environ={})
build_flow(config, RunContext(home=HOME))
took = time.perf_counter() - start
clients = [m for m in ("sqlalchemy", "confluent_kafka", "httpx", "bson", "fsspec") if m in sys.modules]
print(took, ",".join(clients))
"""


def config_load(checkout: Path, home: Path) -> tuple[float, str]:
    """(seconds to load the registry and a config and build the flow, client modules loaded)."""
    code = f"CONFIG = {HEAVY!r}\nfrom pathlib import Path\nHOME = Path({str(home)!r})\n" + FIXED
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=_env(checkout),
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), (out[1] if len(out) > 1 else "")


def floor() -> float:
    """Seconds for a bare interpreter to import bytewax's runner and polars."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import bytewax.run, polars"], check=True)
    return time.perf_counter() - start


def first_record(checkout: Path, base: Path) -> float:
    """Seconds from spawning the main job to its first record on disk."""
    data = base / "data"
    data.mkdir(parents=True)
    (data / "m.csv").write_text("timestamp,value\n2024-01-01 00:00:00,1.5\n2024-01-01 00:05:00,2.5\n")
    home = base / "home"
    (home / "conf.d").mkdir(parents=True)
    config = json.loads(json.dumps(CONFIG).replace('"DATA"', json.dumps(str(data))))
    (home / "conf.d" / "config.json").write_text(json.dumps(config))
    out = home / "components" / "local" / "machine__temperature.jsonl"
    env = {**_env(checkout), "FACTORYFLOW_HOME": str(home), "FACTORYFLOW_LOG_LEVEL": "WARNING"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.main:flow"], cwd=checkout,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (out.exists() and out.stat().st_size):
            if proc.poll() is not None or time.perf_counter() - start > 60:
                raise RuntimeError(f"the main job in {checkout} delivered nothing")
            time.sleep(0.002)
        return time.perf_counter() - start
    finally:
        proc.kill()
        proc.wait()


def _env(checkout: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout)}


def main() -> None:
    """Measure (interleaving the checkouts and the floor run by run) and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another checkout to measure beside this one")
    args = parser.parse_args()
    checkouts = ([("before", args.before.resolve())] if args.before else []) + [("now", REPO)]
    firsts: dict[str, list[float]] = {name: [] for name, _ in checkouts}
    loads: dict[str, list[float]] = {name: [] for name, _ in checkouts}
    clients: dict[str, str] = {}
    floors = []
    for _ in range(args.runs):
        floors.append(floor())
        for name, checkout in checkouts:
            with tempfile.TemporaryDirectory() as tmp:
                took, clients[name] = config_load(checkout, Path(tmp))
                loads[name].append(took)
                firsts[name].append(first_record(checkout, Path(tmp)))
    bare = statistics.median(floors)
    print(f"floor (bare interpreter importing bytewax and polars): {bare:.3f} s, median of {args.runs}")
    print(f"{'checkout':<8} {'first record':>12} {'fixed start-up':>15} {'config load':>12}  "
          "client libraries loaded with the config")
    for name, checkout in checkouts:
        first, load = statistics.median(firsts[name]), statistics.median(loads[name])
        print(f"{name:<8} {first:>10.3f} s {first - bare:>13.3f} s {load:>10.3f} s  "
              f"{clients[name] or '-'}   ({checkout})")
    fixed = statistics.median(firsts["now"]) - bare
    print(f"target: fixed start-up <= {TARGET} s: {'met' if fixed <= TARGET else 'NOT met'} "
          f"({fixed:.3f} s)")


if __name__ == "__main__":
    main()
