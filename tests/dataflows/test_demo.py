"""The demo: the quickstart's plant on local sources, collected by the real main job."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from dataflows.config import validate
from dataflows.demo import demo_config
from tests.flowrun import REPO
from tests.specs import quickstart


def test_demo_config_is_the_quickstart_with_local_sources(tmp_path: Path) -> None:
    demo, original = demo_config(tmp_path), quickstart()
    assert validate(demo, runnable=True) == []
    assert demo["transforms"] == original["transforms"]
    def streams(doc: dict) -> list[tuple[str, str]]:
        return [(s["asset"], s["stream_type"]) for r in doc["data_receiver"] for s in r["streams"]]

    assert streams(demo) == streams(original)
    assert [r["data_receiver_name"] for r in demo["data_receiver"]] == ["SQL Plugin 1", "azure_receiver_1"]
    for mine, theirs in zip(demo["data_receiver"][0]["streams"], original["data_receiver"][0]["streams"],
                            strict=True):
        assert mine["state_fields"] == theirs["state_fields"]
        assert mine["query"].split() == theirs["query"].split()  # same query, line breaks aside


def test_demo_runs_and_output_grows(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-m", "dataflows.demo", "--home", str(home), "--seconds", "8",
                           "--interval", "0.5"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = home / "components" / "MyTransmit_1"
    counts = {p.name: len(p.read_text().splitlines()) for p in out.glob("*.jsonl")}
    assert set(counts) == {"lasercut__mssql.jsonl", "diecast__mssql.jsonl", "fusion__mssql.jsonl",
                           "spraypaint__azure_lake.jsonl"}
    assert counts["lasercut__mssql.jsonl"] == 2 * counts["diecast__mssql.jsonl"] == 6 * counts["fusion__mssql.jsonl"]
    assert counts["fusion__mssql.jsonl"] >= 5  # one reading per tick, delivered as it comes
    record = json.loads((out / "diecast__mssql.jsonl").read_text().splitlines()[0])
    assert set(record) == {"asset", "stream_type", "timestamp", "machine", "melt_temp_c", "shot_pressure_bar"}
    assert record["timestamp"].endswith("Z")
    for stream in ("lasercut:mssql", "diecast:mssql", "fusion:mssql", "spraypaint:azure_lake"):
        assert re.search(rf"{stream}: \+\d+ records, \d+ delivered, last timestamp 20", done.stderr), stream
    assert (f"stopped on SIGTERM: records delivered per stream: MyTransmit_1: diecast:mssql "
            f"{counts['diecast__mssql.jsonl']}, fusion:mssql {counts['fusion__mssql.jsonl']}, lasercut:mssql "
            f"{counts['lasercut__mssql.jsonl']}, spraypaint:azure_lake {counts['spraypaint__azure_lake.jsonl']}"
            ) in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_plant_only_writes_the_plant_and_runs_no_job(tmp_path: Path) -> None:
    """The compose stack's plant service: readings until stopped, no config, no job."""
    done = subprocess.run([sys.executable, "-m", "dataflows.demo", "--plant-only", "--home", str(tmp_path),
                           "--interval", "0.2", "--seconds", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "demo plant stopped after" in done.stdout
    with sqlite3.connect(tmp_path / "demo" / "plant.sqlite") as db:
        lasercut = db.execute("SELECT count(*) FROM ca_lasercut").fetchone()[0]
    assert lasercut >= 6 * 3  # 6 machines, a reading each every 0.2 s
    assert list((tmp_path / "demo" / "spraypaint").glob("*.csv"))
    assert not (tmp_path / "conf.d").exists() and not (tmp_path / "recovery").exists()
