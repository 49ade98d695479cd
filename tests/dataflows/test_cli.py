"""The commands a person runs: ``python -m dataflows run|validate``, ``factoryflow``, and
``bytewax.run`` on a recovery directory nobody initialised; stops end with one summary
line, status 0 and no traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dataflows import registry
from dataflows.testing import poll_until
from tests.conftest import NAB_ROWS
from tests.dataflows.test_main import nab_config
from tests.flowrun import REPO
from tests.services.process import free_port

FACTORYFLOW = Path(sys.executable).parent / "factoryflow"


def files_config(directory: Path) -> dict:
    config = nab_config(directory, None)
    config["data_receiver"] = config["data_receiver"][:1]
    return config


def nab_home(tmp_path: Path, nab_machine_csv: Path) -> Path:
    """An installation whose config reads the NAB file into the ``local`` transmit."""
    home = tmp_path / "home"
    (home / "conf.d").mkdir(parents=True)
    (home / "conf.d" / "config.json").write_text(json.dumps(files_config(nab_machine_csv.parent)))
    return home


def test_run_initialises_recovery_and_a_sigint_ends_with_one_summary_line(tmp_path: Path,
                                                                          nab_machine_csv: Path) -> None:
    home = nab_home(tmp_path, nab_machine_csv)
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        job = subprocess.Popen([sys.executable, "-m", "dataflows", "run", "--home", str(home)], cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=out)
        output = home / "components" / "local" / "nab__csv.jsonl"
        poll_until(lambda: output.exists() and len(output.read_bytes().splitlines()) == NAB_ROWS,
                   timeout=60, what="every NAB row written")
        job.send_signal(signal.SIGINT)
        assert job.wait(60) == 0
    text = log.read_text()
    assert "factoryflow INFO SIGINT received: stopping after the batches in hand" in text
    summaries = [line for line in text.splitlines() if "records delivered per stream" in line]
    assert len(summaries) == 1
    assert summaries[0].endswith(f"stopped on SIGINT: records delivered per stream: local: nab:csv {NAB_ROWS}")
    assert "Traceback" not in text
    assert any((home / "recovery").glob("part-*.sqlite3"))


def test_bytewax_run_on_an_uninitialised_recovery_directory_says_so_in_one_line(tmp_path: Path,
                                                                                nab_machine_csv: Path) -> None:
    home = nab_home(tmp_path, nab_machine_csv)
    recovery = home / "recovery"
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.main:flow", "-r", str(recovery),
                           "-s", "5", "-b", "0"], cwd=home, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FACTORYFLOW_HOME": str(home), "PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    assert (done.stdout + done.stderr).splitlines() == [(
        f"factoryflow: the recovery directory {recovery} is not initialised: run the job with "
        f"`python -m dataflows run` (it initialises it), or first `mkdir -p {recovery} && "
        f"python -m bytewax.recovery {recovery} 1`")]


def _run_until_delivered(home: Path, tmp_path: Path, name: str, rows: int, *extra: str) -> str:
    """``python -m dataflows run`` on ``home`` until the output holds ``rows`` lines, then
    Ctrl-C; its console output."""
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        job = subprocess.Popen([sys.executable, "-m", "dataflows", "run", "--home", str(home), *extra],
                               cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=out)
        output = home / "components" / "local" / "nab__csv.jsonl"
        poll_until(lambda: output.exists() and len(output.read_bytes().splitlines()) == rows,
                   timeout=60, what=f"{rows} rows written")
        job.send_signal(signal.SIGINT)
        assert job.wait(60) == 0
    return log.read_text()


def test_a_home_that_delivered_refuses_to_start_over_without_its_recovery_state(
        tmp_path: Path, nab_machine_csv: Path) -> None:
    home = nab_home(tmp_path, nab_machine_csv)
    _run_until_delivered(home, tmp_path, "first", NAB_ROWS)
    shutil.rmtree(home / "recovery")  # lost: deleted, or a volume not mounted
    refused = subprocess.run([sys.executable, "-m", "dataflows", "run", "--home", str(home)], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2
    assert (refused.stdout + refused.stderr).splitlines() == [(
        f"factoryflow: {home} has delivered {NAB_ROWS:,} records of 1 streams, but its recovery state "
        f"{home / 'recovery'} is missing: started so, every stream would read its source from the start and "
        f"deliver it all again. Restore {home / 'recovery'} (a volume not mounted?), or start over on "
        f"purpose: `factoryflow run --fresh-state` (or FACTORYFLOW_FRESH_STATE=1, or "
        "POST /v1/ftx/start?fresh_state=true)")]
    assert not (home / "recovery").exists()
    again = _run_until_delivered(home, tmp_path, "again", 2 * NAB_ROWS, "--fresh-state")
    assert (f"WARNING starting over with fresh state in {home / 'recovery'}: {NAB_ROWS} records of 1 streams "
            "were delivered before") in again


def test_bytewax_run_initialises_an_empty_recovery_directory_and_warns_without_one(
        tmp_path: Path, nab_machine_csv: Path) -> None:
    home = nab_home(tmp_path, nab_machine_csv)
    output = home / "components" / "local" / "nab__csv.jsonl"
    for name, recovery_args in (("with", ["-r", str(home / "recovery")]), ("without", [])):
        (home / "recovery").mkdir(exist_ok=True)  # a freshly mounted, empty volume
        (home / "recovery" / "lost+found").mkdir(exist_ok=True)
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            job = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.main:flow", *recovery_args,
                                    "-s", "5", "-b", "0"] if recovery_args else
                                   [sys.executable, "-m", "bytewax.run", "dataflows.main:flow"],
                                   cwd=home, env={**os.environ, "FACTORYFLOW_HOME": str(home), "PYTHONPATH": str(REPO)},
                                   stdout=out, stderr=out)
            poll_until(lambda: output.exists() and len(output.read_bytes().splitlines()) >= NAB_ROWS,
                       timeout=60, what="the NAB rows written")
            job.send_signal(signal.SIGINT)
            assert job.wait(60) == 0
        output.unlink()
        text = log.read_text()
        warnings = [line for line in text.splitlines() if "no recovery directory (-r)" in line]
        if recovery_args:
            assert any((home / "recovery").glob("part-*.sqlite3")) and warnings == []
        else:
            assert len(warnings) == 1 and " WARNING " in warnings[0]


def test_validate_prints_every_violation_with_its_json_path(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(files_config(tmp_path)))
    config = files_config(tmp_path)
    config["data_receiver"][0]["poll_interval"] = 0
    config["data_transmit"][0]["transmit_type"] = "ftp"
    bad.write_text(json.dumps(config))
    ok = subprocess.run([str(FACTORYFLOW), "validate", str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.splitlines() == [f"{good}: 0 errors, 0 warnings"]
    failed = subprocess.run([sys.executable, "-m", "dataflows", "validate", str(bad)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2
    assert failed.stdout.splitlines() == [
        "error: data_receiver/0/poll_interval: Expected `float` >= 0.05, got 0",
        ("error: data_transmit/0/transmit_type: unknown transmit_type 'ftp'; accepted: "
         f"{', '.join(registry.transmits.tags())}"),
        f"{bad}: 2 errors, 0 warnings"]
    config["data_transmit"][0]["transmit_type"] = "localfile"
    bad.write_text(json.dumps(config))
    one = subprocess.run([str(FACTORYFLOW), "validate", str(bad)], capture_output=True, text=True, timeout=60)
    assert one.stdout.splitlines()[-1] == f"{bad}: 1 error, 0 warnings"
    missing = subprocess.run([str(FACTORYFLOW), "validate", str(tmp_path / "none.json")], capture_output=True,
                             text=True, timeout=60)
    assert missing.stdout.splitlines() == [
        f"error: cannot read config file {str(tmp_path / 'none.json')!r}: No such file or directory"]


def test_the_api_ends_on_sigint_with_status_0_and_a_summary(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        api = subprocess.Popen([str(FACTORYFLOW), "api", "--port", str(port), "--no-start"], cwd=tmp_path,
                               env={**os.environ, "FACTORYFLOW_HOME": str(home)}, stdout=out, stderr=out)
        poll_until(lambda: f"127.0.0.1:{port}" in log.read_text(), timeout=60, what="the API listening")
        time.sleep(0.5)
        api.send_signal(signal.SIGINT)
        assert api.wait(60) == 0
    text = log.read_text()
    assert "control API stopped, the dataflow with it: records delivered per stream: nothing delivered yet" \
        in text
    assert "Traceback" not in text


def test_ctrl_c_in_the_apis_terminal_stops_the_dataflow_gracefully(tmp_path: Path,
                                                                   nab_machine_csv: Path) -> None:
    """A terminal's Ctrl-C is SIGINT to its whole foreground process group: the dataflow
    the API supervises must get only the API's one SIGTERM, and stop gracefully."""
    home = nab_home(tmp_path, nab_machine_csv)
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        api = subprocess.Popen([str(FACTORYFLOW), "api", "--port", str(port)], cwd=tmp_path,
                               env={**os.environ, "FACTORYFLOW_HOME": str(home)}, stdout=out, stderr=out,
                               start_new_session=True)  # a process group, as a terminal's job is
        try:
            output = home / "components" / "local" / "nab__csv.jsonl"
            poll_until(lambda: output.exists() and len(output.read_bytes().splitlines()) == NAB_ROWS,
                       timeout=90, what="every NAB row written")
            os.killpg(api.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            assert api.wait(60) == 0
        finally:
            if api.poll() is None:
                os.killpg(api.pid, signal.SIGKILL)
    console = (home / "log" / "dataflow-console.log").read_text()
    assert "factoryflow INFO SIGTERM received: stopping after the batches in hand" in console
    assert "SIGINT received" not in console and "received again" not in console
    summaries = [line for line in console.splitlines() if "records delivered per stream" in line]
    assert summaries[-1].endswith(f"stopped on SIGTERM: records delivered per stream: local: nab:csv {NAB_ROWS}")
    assert "dataflow stopped (exit status 0)" in log.read_text()
