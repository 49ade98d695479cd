"""The API driving a real dataflow child: start/stop/restart/crash, markers, restream, logs, status."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from connectors.receivers.localfile import LocalFileReceiver
from dataflows.config import load
from dataflows.control import ControlStore, control_path
from dataflows.runtime import PartitionState, ReceiverSource, RunContext
from tests.api.conftest import Api, make_api
from tests.conftest import NAB_ROWS
from tests.dataflows.test_main import nab_config
from tests.nab import create_table, insert_lines, nab_lines
from tests.services.postgres import Postgres
from tests.services.process import free_port

FTX_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
RESTREAM_DONE = {"success": True, "response": "Restream has completed successfully"}


def records(api: Api, name: str) -> list[dict[str, Any]]:
    path = api.home / "components" / "local" / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.endswith(b"}")]


def wait(api: Api, condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            log = (api.home / "log" / "factorytx_core.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"timed out waiting for {what}; dataflow log:\n{log}")
        time.sleep(0.05)


class _NoDatabase:
    def connection(self) -> dict[str, Any]:
        return {}


def files_only(directory: Path) -> dict[str, Any]:
    config = nab_config(directory, _NoDatabase())  # type: ignore[arg-type]
    config["data_receiver"] = config["data_receiver"][:1]
    config["transforms"][0]["filter_stream"] = ["nab:csv"]
    return config


def status(api: Api) -> dict[str, Any]:
    return api.ok("GET", "/v1/status")


def test_start_stop_restart_and_crash_restart(api: Api, nab_machine_csv: Path) -> None:
    api.ok("POST", "/v1/config", json=files_only(nab_machine_csv.parent))
    assert status(api)["factorytx"]["status"] == "stopped"
    assert api.client.post("/v1/ftx/start").json() == {"success": True, "response": "running"}
    wait(api, lambda: len(records(api, "nab__csv.jsonl")) >= NAB_ROWS, "every NAB row")
    first = status(api)["factorytx"]["process"]["pid"]
    assert first is not None

    assert api.client.post("/v1/ftx/restart").json() == {"success": True, "response": "running"}
    second = status(api)["factorytx"]["process"]["pid"]
    assert second not in (None, first)

    os.kill(second, signal.SIGKILL)  # a crash
    wait(api, lambda: status(api)["factorytx"]["status"] == "failed", "the crash to show", timeout=10)
    wait(api, lambda: status(api)["factorytx"]["status"] == "running", "the restart after a crash")
    process = status(api)["factorytx"]["process"]
    assert process["pid"] not in (first, second)
    assert process["crash_restarts"] == 1 and process["last_exit"]["exit_status"] == -signal.SIGKILL
    web = api.ok("GET", "/v1/log/stream/factorytx_web.log", params={"lines": 1000})
    assert any("dataflow exited unexpectedly (exit status -9" in line for line in web), web
    assert all(FTX_LINE.match(line) for line in web if line[:2] == "20")

    assert api.client.post("/v1/ftx/stop").json() == {"success": True, "response": "stopped"}
    assert status(api)["factorytx"]["status"] == "stopped"
    assert api.client.post("/v1/ftx/stop").json()["response"] == "stopped"  # idempotent
    core = api.ok("GET", "/v1/log/stream", params={"lines": 5000})
    assert core and all(FTX_LINE.match(line) for line in core if line[:2] == "20")
    assert any("SIGTERM received" in line for line in core)  # stopped gracefully
    delivered = records(api, "nab__csv.jsonl")
    assert len({(r["timestamp"], r["value"]) for r in delivered}) == NAB_ROWS  # nothing lost


def test_start_refuses_to_start_over_when_the_recovery_state_is_gone(api: Api, nab_machine_csv: Path) -> None:
    api.ok("POST", "/v1/config", json=files_only(nab_machine_csv.parent))
    api.ok("POST", "/v1/ftx/start")
    wait(api, lambda: len(records(api, "nab__csv.jsonl")) >= NAB_ROWS, "every NAB row")
    api.ok("POST", "/v1/ftx/stop")
    shutil.rmtree(api.home / "recovery")  # a volume not mounted
    body = api.client.post("/v1/ftx/start").json()
    assert body["success"] is False and body["response"] == "failed"
    line = (f"{api.home} has delivered {NAB_ROWS:,} records of 1 streams, but its recovery state "
            f"{api.home / 'recovery'} is missing")
    assert line in body["error"]["text"] and "FACTORYFLOW_FRESH_STATE=1" in body["error"]["text"]
    assert "POST /v1/ftx/start?fresh_state=true" in body["error"]["text"]
    assert status(api)["factorytx"]["status"] == "failed"
    assert len(records(api, "nab__csv.jsonl")) == NAB_ROWS  # nothing read again
    assert api.ok("POST", "/v1/ftx/start", params={"fresh_state": "true"}) == "running"  # told to start over
    wait(api, lambda: len(records(api, "nab__csv.jsonl")) >= 2 * NAB_ROWS, "every NAB row again")
    assert api.ok("POST", "/v1/ftx/restart") == "running"  # the new state is kept: no refusal
    assert api.ok("POST", "/v1/ftx/stop") == "stopped"


def test_start_names_a_damaged_state_file_and_rebuilds_a_damaged_ledger(api: Api, nab_machine_csv: Path) -> None:
    api.ok("POST", "/v1/config", json=files_only(nab_machine_csv.parent))
    api.ok("POST", "/v1/ftx/start")
    wait(api, lambda: len(records(api, "nab__csv.jsonl")) >= NAB_ROWS, "every NAB row")
    api.ok("POST", "/v1/ftx/stop")
    (part,) = (api.home / "recovery").glob("part-*.sqlite3")
    part.write_bytes(part.read_bytes()[:1000])  # truncated
    ledger = api.home / "state" / "ledger.sqlite"
    ledger.write_bytes(b"garbage" * 100)
    body = api.client.post("/v1/ftx/start").json()
    assert body["success"] is False and body["response"] == "failed"
    assert f"{part} is damaged (" in body["error"]["text"]
    assert f"`factoryflow set-aside {part}` moves it aside" in body["error"]["text"]
    web = api.ok("GET", "/v1/log/stream/factorytx_web.log", params={"lines": 1000})
    assert any(f"{ledger} was damaged (file is not a database): moved aside" in line for line in web)
    assert api.ok("POST", "/v1/ftx/stop") == "stopped"


def test_start_refuses_a_config_that_cannot_run(api: Api) -> None:
    templates = api.ok("GET", "/v1/config/templates")
    api.ok("POST", "/v1/config", json=templates[3]["configuration"])  # SQL: placeholders
    body = api.client.post("/v1/ftx/start").json()
    assert body["success"] is False and body["response"] == "failed"
    assert "template placeholder not filled in" in body["error"]["text"]
    assert status(api)["factorytx"]["status"] == "failed"
    assert api.ok("POST", "/v1/ftx/stop") == "stopped"


def test_failing_sql_stream_shows_its_error_marker(api: Api, tmp_path: Path) -> None:
    config = {
        "data_receiver": [{
            "data_receiver_name": "SQL Plugin 1", "protocol": "sql", "poll_interval": 1,
            "connections": [{"database_type": "postgresql", "host": "127.0.0.1", "port": free_port(),
                             "username": "postgres", "password": "pg-secret-123", "database_name": "x"}],
            "streams": [{"asset": "Students", "stream_type": "cycle",
                         "query": "SELECT * FROM students WHERE id > :id ORDER BY id",
                         "state_fields": [{"column_name": "id", "data_type": "integer", "initial_value": 0}]}],
        }],
        "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}],
    }
    api.ok("POST", "/v1/config", json=config)
    assert api.ok("POST", "/v1/ftx/start") == "running"

    def markers() -> list[dict[str, Any]]:
        return api.ok("GET", "/v1/streams")[0]["markers"]

    wait(api, lambda: bool(markers()), "an error marker")
    (stream,) = api.ok("GET", "/v1/streams")
    assert {k: stream[k] for k in ("stream", "asset", "stream_type", "data_receiver")} == {
        "stream": "Students:cycle", "asset": "Students", "stream_type": "cycle", "data_receiver": "SQL Plugin 1"}
    (marker,) = stream["markers"]
    assert {k: marker[k] for k in ("component", "component_type", "asset", "stream_type", "category", "level")} \
        == {"component": "SQL Plugin 1", "component_type": "Receiver", "asset": "Students",
            "stream_type": "cycle", "category": "query", "level": "error"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", marker["timestamp"])
    assert marker["message"].startswith("Query failed: (adbc_driver_manager.OperationalError)")
    assert "Connection refused" in marker["message"] or "connection failed" in marker["message"]
    assert marker["message"].endswith("Current state: {'id': 0}")
    services = status(api)["factorytx"]["services"]
    assert services["SQL Plugin 1"]["status"] == "running" and services["SQL Plugin 1"]["streams_failing"] == 1
    assert services["local"]["component_type"] == "Transmit"
    metrics = api.client.get("/metrics").text
    assert re.search(r'factoryflow_component_errors_total\{component="SQL Plugin 1",component_type="Receiver"\} '
                     r'[1-9]', metrics)
    core = "\n".join(api.ok("GET", "/v1/log/stream", params={"lines": 2000}))
    assert "pg-secret-123" not in core and "Students:cycle: read failed" in core


def test_restream_while_running_redelivers_sql_and_file_history(api: Api, postgres: Postgres,
                                                                 nab_machine_csv: Path) -> None:
    create_table(postgres.url)
    insert_lines(postgres.url, nab_lines(nab_machine_csv)[1])
    api.ok("POST", "/v1/config", json=nab_config(nab_machine_csv.parent, postgres))
    api.ok("POST", "/v1/ftx/start")
    wait(api, lambda: len(records(api, "nab__csv.jsonl")) >= NAB_ROWS
         and len(records(api, "nab__sql.jsonl")) >= NAB_ROWS, "the history in both streams")
    assert api.client.post("/v1/restream", json={"files": [{"asset": "nab", "stream_type": "csv"}],
                                                 "db": [{"asset": "nab", "stream_type": "sql"}]}).json() \
        == RESTREAM_DONE
    wait(api, lambda: len(records(api, "nab__csv.jsonl")) >= 2 * NAB_ROWS
         and len(records(api, "nab__sql.jsonl")) >= 2 * NAB_ROWS, "the history delivered again")
    time.sleep(2)  # and nothing more: the reset was applied once
    for name in ("nab__csv.jsonl", "nab__sql.jsonl"):
        counts = Counter((r["timestamp"], r["value"]) for r in records(api, name))
        assert len(records(api, name)) == 2 * NAB_ROWS
        assert set(Counter(counts.values())) == {2} or sum(counts.values()) == 2 * NAB_ROWS
    delivered = status(api)["last_data_transmit"]["local"]
    assert delivered["records_delivered"] == 4 * NAB_ROWS and delivered["last_success"] is not None
    metrics = api.client.get("/metrics").text
    assert f'factoryflow_records_received_total{{receiver="files",stream="nab:csv"}} {2 * NAB_ROWS}.0' in metrics
    assert f'factoryflow_records_delivered_total{{stream="nab:sql",transmit="local"}} {2 * NAB_ROWS}.0' \
        in metrics or f'factoryflow_records_delivered_total{{transmit="local",stream="nab:sql"}} ' \
                       f'{2 * NAB_ROWS}.0' in metrics
    core = "\n".join(api.ok("GET", "/v1/log/stream", params={"lines": 5000}))
    assert "nab:csv: restream request 1: state" in core and "nab:sql: restream request 1: state" in core


def test_restream_while_stopped_applies_at_next_start(api: Api, nab_machine_csv: Path) -> None:
    api.ok("POST", "/v1/config", json=files_only(nab_machine_csv.parent))
    api.ok("POST", "/v1/ftx/start")
    wait(api, lambda: len(records(api, "nab__csv.jsonl")) >= NAB_ROWS, "every NAB row")
    api.ok("POST", "/v1/ftx/stop")
    answer = api.ok("POST", "/v1/restream", json={"files": [{"asset": "nab", "stream_type": "csv"}]})
    assert answer == "Restream is scheduled: it applies when the dataflow starts"
    assert len(records(api, "nab__csv.jsonl")) == NAB_ROWS
    api.ok("POST", "/v1/ftx/start")
    wait(api, lambda: len(records(api, "nab__csv.jsonl")) >= 2 * NAB_ROWS, "the history delivered again")
    store = ControlStore(control_path(api.home))
    wait(api, lambda: store.applied("files", "nab:csv") == 1, "the acknowledgement")
    api.ok("POST", "/v1/ftx/restart")  # resumes from its snapshot: no second reset
    time.sleep(3)
    assert len(records(api, "nab__csv.jsonl")) == 2 * NAB_ROWS


def test_restream_of_unknown_receiver_or_stream_is_a_500(api: Api, nab_machine_csv: Path) -> None:
    api.ok("POST", "/v1/config", json=files_only(nab_machine_csv.parent))
    unknown = api.client.post("/v1/restream", json={"nope": [{"asset": "nab", "stream_type": "csv"}]})
    assert unknown.status_code == 500
    assert unknown.json()["success"] is False and "unknown data receiver 'nope'" in unknown.json()["error"]["text"]
    missing = api.client.post("/v1/restream", json={"files": [{"asset": "nab", "stream_type": "sql"}]})
    assert missing.status_code == 500 and "has no stream 'nab:sql'" in missing.json()["error"]["text"]
    assert ControlStore(control_path(api.home)).pending("files", "nab:sql") == 0  # nothing requested


@pytest.fixture
def impatient_api(tmp_path: Path) -> Iterator[Api]:
    """An API whose restream waits 1 s for acknowledgements."""
    yield from make_api(tmp_path / "home", restream_timeout=1)


def test_restream_without_acknowledgement_is_a_500(impatient_api: Api, nab_machine_csv: Path) -> None:
    api = impatient_api
    api.ok("POST", "/v1/config", json=files_only(nab_machine_csv.parent))
    api.ok("POST", "/v1/ftx/start")
    wait(api, lambda: len(records(api, "nab__csv.jsonl")) >= NAB_ROWS, "every NAB row")
    pid = status(api)["factorytx"]["process"]["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive, but never polls
    try:
        answer = api.client.post("/v1/restream", json={"files": [{"asset": "nab", "stream_type": "csv"}]})
    finally:
        os.kill(pid, signal.SIGCONT)
    assert answer.status_code == 500
    assert "no acknowledgement within 1 s from files nab:csv" in answer.json()["error"]["text"]
    wait(api, lambda: ControlStore(control_path(api.home)).applied("files", "nab:csv") == 1,
         "the late acknowledgement")  # the request stays: the stream applies it when it runs again


def test_crash_between_request_and_snapshot_still_resets_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("id,value\n1,10\n2,20\n3,30\n")
    config = load({
        "data_receiver": [{"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 1,
                           "connections": [{"data_directory": str(data)}],
                           "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                           "streams": [{"asset": "a", "stream_type": "b"}]}],
        "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}]})
    receiver = config.data_receiver[0]
    assert isinstance(receiver, LocalFileReceiver)
    source = ReceiverSource(receiver, RunContext(home=tmp_path / "home"))

    def rows(state: Any) -> tuple[int, PartitionState]:
        part = source.build_part("receive", "a:b", state)
        try:
            return sum(b.frame.height for b in part.next_batch()), part.snapshot()
        finally:
            part.close()

    read, durable = rows(None)
    assert read == 3 and durable.restream_id == 0
    assert rows(durable)[0] == 0  # resumed: nothing new
    store = ControlStore(control_path(tmp_path / "home"))
    request = store.request_restream([("files", "a:b")])
    read, _lost = rows(durable)  # applies the reset and re-reads, then "crashes" before a snapshot
    assert read == 3 and store.applied("files", "a:b") == request
    read, after = rows(durable)  # restarts from the last durable snapshot: the reset is not lost
    assert read == 3 and after.restream_id == request
    assert rows(after)[0] == 0  # once snapshotted, never applied again


def test_a_dataflow_left_by_a_killed_api_is_stopped_before_a_new_start(tmp_path: Path,
                                                                        nab_machine_csv: Path) -> None:
    from api.supervisor import Supervisor

    home = tmp_path / "home"
    (home / "conf.d").mkdir(parents=True)
    (home / "conf.d" / "config.json").write_text(json.dumps(files_only(nab_machine_csv.parent)))
    first = Supervisor(home, stop_timeout=30)
    first.start()
    orphan = first.info()["pid"]
    first._wanted = False  # the API process dies: nobody stops or watches its child
    second = Supervisor(home, stop_timeout=30)
    try:
        assert second.start() == "running"
        assert second.info()["pid"] != orphan
        assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
        assert (home / "state" / "dataflow.pid").read_text() == str(second.info()["pid"])
    finally:
        second.stop()
        first.stop()
