"""The demo: a small plant like the FactoryTX quickstart's, collected by the real main job.

``python -m dataflows.demo [--home DIR] [--seconds N] [--interval S] [--plant-only]``

- a SQLite database ``<home>/demo/plant.sqlite`` whose tables ``ca_lasercut`` (6 laser
  cutters, Carmel), ``hk_diecast`` (3 die casters, Hong Kong, column ``TIMESTAMP``) and
  ``tl_fusion`` (1 fusion machine, Toulouse) gain rows every ``--interval`` seconds,
  stamped with each plant's local wall-clock time;
- spraypaint CSV files (column ``Timestamp``, Tokyo local time) appearing in
  ``<home>/demo/spraypaint`` every fifth interval;
- the quickstart configuration written to ``<home>/conf.d/config.json`` with ``sqlite`` in
  place of MS SQL Server, ``localfile`` in place of Azure Data Lake and the ``localfile``
  transmit in place of the Sight Machine cloud; its streams, queries, renames and
  timezones are the quickstart's;
- ``python -m bytewax.run dataflows.main:flow`` with recovery under ``<home>/recovery``,
  whose log shows a progress line per stream at each delivery (records delivered, last
  timestamp), into ``<home>/components/MyTransmit_1/<asset>__<stream_type>.jsonl``.

It runs until Ctrl-C (or for ``--seconds``), then the dataflow stops gracefully and logs
one line with the records delivered per stream. ``--home`` defaults to
``$FACTORYFLOW_HOME`` or ``./.factoryflow``, the main job's own default, so the same
installation can be run again with ``python -m dataflows run``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dataflows.home import component_dir, default_config_path, home_dir, init_recovery, recovery_dir

PLANTS = {  # table: (timestamp column, IANA zone, machines, value columns)
    "ca_lasercut": ("timestamp", "America/New_York", 6, ("power_kw", "cut_speed_mm_s")),
    "hk_diecast": ("TIMESTAMP", "Asia/Hong_Kong", 3, ("melt_temp_c", "shot_pressure_bar")),
    "tl_fusion": ("timestamp", "Europe/Paris", 1, ("weld_current_a", "line_speed_m_min")),
}
SPRAYPAINT_ZONE = "Asia/Tokyo"


#: Seconds the job runs on after the plant's last reading with ``--seconds``: more than
#: the config's ``poll_interval`` (2 s).
CATCH_UP_SECONDS = 3.0


def demo_config(home: Path, transmit: dict[str, Any] | None = None) -> dict[str, Any]:
    """The quickstart configuration with the demo's local sources (under ``home / "demo"``)
    and ``transmit``, by default the localfile transmit (the compose stack's is Kafka)."""
    demo = home / "demo"

    def stream(asset: str, table: str, column: str, initial: str) -> dict[str, Any]:
        return {"asset": asset, "stream_type": "mssql",
                "state_fields": [{"column_name": column, "data_type": "timestamp", "initial_value": initial}],
                "query": f"SELECT * FROM {table}\nWHERE {column} > :{column}\nORDER BY {column};"}

    def convert(name: str, pattern: str, zone: str) -> dict[str, Any]:
        return {"transform_name": name, "transform_type": "convert_timestamps", "filter_stream": [pattern],
                "field_names": ["timestamp"], "timezone": zone}

    return {
        "data_receiver": [
            {"data_receiver_name": "SQL Plugin 1", "protocol": "sql", "poll_interval": 2,
             "connections": [{"database_type": "sqlite", "database_name": str(demo / "plant.sqlite"),
                              "connection_name": "Nedry"}],
             "streams": [stream("lasercut", "ca_lasercut", "timestamp", "2018-10-22 10:29:00"),
                         stream("diecast", "hk_diecast", "TIMESTAMP", "2018-10-22 12:29:00"),
                         stream("fusion", "tl_fusion", "timestamp", "2018-10-22 02:28:00")]},
            {"data_receiver_name": "azure_receiver_1", "protocol": "localfile", "poll_interval": 2,
             "connections": [{"data_directory": str(demo / "spraypaint"), "connection_name": "Blue"}],
             "parsers": [{"parser_name": "CSV_Parser_1", "parser_type": "csv"}],
             "streams": [{"asset": "spraypaint", "stream_type": "azure_lake", "file_filter": ["*.csv"],
                          "parser": "CSV_Parser_1"}]},
        ],
        "transforms": [
            {"transform_name": "Rename 1", "transform_type": "rename", "filter_stream": ["diecast:mssql"],
             "renames": [{"from": "TIMESTAMP", "to": "timestamp"}]},
            {"transform_name": "Rename 2", "transform_type": "rename", "filter_stream": ["spraypaint:azure_lake"],
             "renames": [{"from": "Timestamp", "to": "timestamp"}]},
            convert("Time Converter 1", "spraypaint:*", SPRAYPAINT_ZONE),
            convert("Time Converter 2", "lasercut:mssql", "America/New_York"),
            convert("Time Converter 3", "diecast:mssql", "Asia/Hong_Kong"),
            convert("Time Converter 4", "fusion:mssql", "Europe/Paris"),
        ],
        "data_transmit": [transmit or {"transmit_name": "MyTransmit_1", "transmit_type": "localfile"}],
    }


class Plant:
    """Writes the demo plant's data: table rows every tick, a spraypaint file every fifth."""

    def __init__(self, home: Path, seed: int = 7) -> None:
        self.demo = home / "demo"
        self.random = random.Random(seed)
        self.ticks = 0

    def create(self) -> None:
        """Create the database tables and the spraypaint directory (kept if they exist)."""
        (self.demo / "spraypaint").mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.demo / "plant.sqlite") as db:
            for table, (column, _, _, values) in PLANTS.items():
                columns = ", ".join(f"{v} REAL" for v in values)
                db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({column} TEXT, machine TEXT, {columns})")

    def tick(self) -> None:
        """Add one reading per machine to every table; every fifth tick, one spraypaint file."""
        self.ticks += 1
        with sqlite3.connect(self.demo / "plant.sqlite") as db:
            for table, (_, zone, machines, values) in PLANTS.items():
                stamp = datetime.now(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S.%f")
                for m in range(1, machines + 1):
                    readings = [round(self.random.uniform(10, 500), 3) for _ in values]
                    db.execute(f"INSERT INTO {table} VALUES (?, ?, {', '.join('?' * len(values))})",
                               [stamp, f"{table.split('_')[1]}_{m}", *readings])
        if self.ticks % 5 == 1:
            now = datetime.now(ZoneInfo(SPRAYPAINT_ZONE))
            lines = ["Timestamp,booth,coat_thickness_um,humidity_pct"]
            for booth in range(1, 5):
                lines.append(f"{now:%Y-%m-%d %H:%M:%S},booth_{booth},{self.random.uniform(80, 120):.2f},"
                             f"{self.random.uniform(30, 60):.1f}")
            name = self.demo / "spraypaint" / f"spraypaint_{now:%Y%m%d_%H%M%S}_{self.ticks}.csv"
            part = name.with_suffix(".part")
            part.write_text("\n".join(lines) + "\n")
            part.rename(name)  # appears whole


def prepare(home: Path) -> Path:
    """Write the demo config (refusing to replace another config) and the recovery directory."""
    config_file = default_config_path(home)
    config = demo_config(home)
    if config_file.exists() and json.loads(config_file.read_text()) != config:
        raise SystemExit(f"{config_file} holds another configuration; pass --home with a new directory")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config, indent=2))
    return init_recovery(recovery_dir(home))


def summary(home: Path) -> dict[str, int]:
    """Records delivered per output file of the demo transmit."""
    out = component_dir(home, "MyTransmit_1")
    return {p.name: sum(1 for _ in p.open("rb")) for p in sorted(out.glob("*.jsonl"))} if out.exists() else {}


def run_plant(plant: Plant, interval: float, seconds: float | None) -> int:
    """Tick ``plant`` every ``interval`` seconds until SIGTERM or Ctrl-C (or ``seconds``);
    one line at the start and one at the end; returns 0."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"demo plant in {plant.demo}: readings every {interval:g} s; SIGTERM or Ctrl-C stops", flush=True)
    deadline = time.monotonic() + seconds if seconds else None
    plant.tick()
    while not stop.wait(interval) and (deadline is None or time.monotonic() < deadline):
        plant.tick()
    print(f"demo plant stopped after {plant.ticks} readings", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status (0 when every stream delivered records)."""
    parser = argparse.ArgumentParser(prog="python -m dataflows.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="installation directory (FACTORYFLOW_HOME)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between plant readings")
    parser.add_argument("--plant-only", action="store_true",
                        help="only the plant: write its data under <home>/demo until stopped (the compose "
                             "stack's plant service; its collector runs elsewhere)")
    args = parser.parse_args(argv)
    home = (args.home or home_dir()).resolve()
    plant = Plant(home)
    plant.create()
    if args.plant_only:
        return run_plant(plant, args.interval, args.seconds)
    recovery = prepare(home)
    plant.tick()
    env = {**os.environ, "FACTORYFLOW_HOME": str(home)}
    env.pop("FACTORYFLOW_CONFIG", None)
    print(f"demo plant in {home / 'demo'}; records go to {component_dir(home, 'MyTransmit_1')}; "
          "Ctrl-C stops", flush=True)
    flow = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.main:flow", "-r", str(recovery),
                             "-s", "5", "-b", "0"], env=env)
    stop = threading.Event()
    interrupted = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: (interrupted.set(), stop.set()))
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + args.seconds if args.seconds else None
    while not stop.wait(args.interval) and flow.poll() is None:
        plant.tick()
        if deadline is not None and time.monotonic() >= deadline:
            # the plant stops; every stream polls once more, so the output holds all it wrote
            stop.wait(CATCH_UP_SECONDS)
            break
    if interrupted.is_set():  # Ctrl-C reached the dataflow too: let it stop on its own
        with contextlib.suppress(subprocess.TimeoutExpired):
            flow.wait(10)
    if flow.poll() is None:
        flow.send_signal(signal.SIGTERM)
    code = flow.wait()  # the job logs one line with the records delivered per stream
    return 0 if code == 0 and len(summary(home)) == 4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
