"""A state file damaged between runs (issue 25): the ledger is moved aside and rebuilt
while delivery goes on; a damaged recovery partition or outbox stops the start with one
line naming the file, what it holds and the command that moves it aside, and after that
command new rows are delivered. The damage: pages garbled (the ledger), the file
truncated (the recovery partition), the header garbled (the outbox)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.flowrun import REPO
from tests.simulators.sightmachine import SightMachineSimulator


def _files_and_outbox(data: Path, sight_machine: SightMachineSimulator) -> dict[str, Any]:
    """CSV files into the ``local`` transmit, and into Sight Machine's outbox."""
    return {"data_receiver": [{"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 0.5,
                               "connections": [{"data_directory": str(data)}],
                               "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                               "streams": [{"asset": "line", "stream_type": "csv", "parser": "csv",
                                            "file_filter": ["*.csv"]}]}],
            "transforms": [], "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"},
                                                sight_machine.transmit()]}


def _write(data: Path, name: str, seqs: range) -> None:
    (data / name).write_text("seq\n" + "".join(f"{n}\n" for n in seqs))


def _seqs(flow: Any) -> list[int]:
    return [r["seq"] for r in flow.output("local", "line__csv.jsonl")]


def _garble(path: Path, at: int, size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    data[at:at + size] = b"\xa5" * min(size, len(data) - at)
    path.write_bytes(bytes(data))


def test_damaged_state_files_are_named_and_the_ledger_is_rebuilt(
        tmp_path: Path, sight_machine: SightMachineSimulator, flows: Any) -> None:
    data = tmp_path / "in"
    data.mkdir()
    _write(data, "a.csv", range(0, 100))
    sight_machine.mode = "503"  # the outbox keeps what it holds
    flow = flows(tmp_path / "home", _files_and_outbox(data, sight_machine))
    home = flow.home
    flow.start()
    flow.wait_for(lambda: _seqs(flow) == list(range(100)), what="the first rows")
    assert flow.stop(signal.SIGTERM) == 0

    # the ledger, its pages garbled: moved aside, made anew, delivery goes on
    ledger = home / "state" / "ledger.sqlite"
    _garble(ledger, 4096)
    _write(data, "b.csv", range(100, 150))
    flow.start()
    flow.wait_for(lambda: _seqs(flow) == list(range(150)), what="new rows after the ledger was damaged")
    assert flow.stop(signal.SIGTERM) == 0
    log = flow.log()
    assert f"WARNING {ledger} was damaged (" in log and "delivery goes on" in log
    assert len(list(ledger.parent.glob("ledger.sqlite.damaged-*Z"))) == 1  # beside it its -wal and -shm
    assert "Traceback" not in log

    # the recovery partition, truncated: one line, exit 2, nothing read again
    (part,) = (home / "recovery").glob("part-*.sqlite3")
    part.write_bytes(part.read_bytes()[:1000])
    flow.start()
    assert flow.proc is not None and flow.proc.wait(60) == 2
    errors = [line for line in flow.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"factoryflow ERROR {part} is damaged (" + errors[0].split(" is damaged (", 1)[1])
    assert (f"it holds the streams' state (cursor values, seen files). `factoryflow set-aside {part}` moves it "
            "aside; the next start then needs --fresh-state") in errors[0]
    assert "Traceback" not in flow.log()

    # the outbox, its header garbled: one line naming what it holds
    outbox = home / "components" / "sight_machine" / "outbox.sqlite"
    _garble(outbox, 0, 16)
    aside = subprocess.run([sys.executable, "-m", "dataflows", "set-aside", str(part)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert aside.returncode == 0 and aside.stdout.startswith(f"{part} moved aside to ")
    refused = subprocess.run([sys.executable, "-m", "dataflows", "run", "--home", str(home), "--fresh-state"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"factoryflow: {outbox} is damaged (file is not a database): it holds an unknown number of records not "
        f"yet delivered to sight_machine. `factoryflow set-aside {outbox}` moves it aside; they are not "
        "delivered (restream their streams to send them again)"]

    # both moved aside: a fresh start reads the files again and delivers new rows
    subprocess.run([sys.executable, "-m", "dataflows", "set-aside", str(outbox)], cwd=REPO, check=True,
                   capture_output=True, timeout=60)
    _write(data, "c.csv", range(150, 160))
    with open(tmp_path / "fresh.log", "wb") as out:
        job = subprocess.Popen([sys.executable, "-m", "dataflows", "run", "--home", str(home), "--fresh-state"],
                               cwd=REPO, stdout=out, stderr=out)
        flow.proc = job
        flow.wait_for(lambda: set(range(160)) <= set(_seqs(flow)), what="every row after the fresh start")
        job.send_signal(signal.SIGTERM)
        assert job.wait(60) == 0
    print(f"\nthe ledger: {log.split(' WARNING ', 1)[1].splitlines()[0]}\nthe recovery partition: {errors[0]}\n"
          f"the outbox: {refused.stderr.strip()}")
