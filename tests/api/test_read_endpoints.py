"""``/v1/log/stream``, ``/v1/meta``, ``/v1/status``, ``/v1/streams`` and ``/metrics`` shapes."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import msgspec
import psutil
import pytest

from api import status
from dataflows import registry
from dataflows.ledger import Ledger, Marker, ledger_path
from dataflows.main import LOG_FORMAT
from dataflows.secrets import RedactingFilter
from tests.api.conftest import Api
from tests.specs import rest_examples

CORE_LINES = [f"2017-11-09 23:18:{n:02d},699 LocalFile-6 LocalFile-PollingService:JsunArmRobot_1:cycle1 INFO "
              f"Processed {n} new resources" for n in range(50)]


def write_core_log(api: Api, lines: list[str]) -> None:
    (api.home / "log").mkdir(parents=True, exist_ok=True)
    (api.home / "log" / "factorytx_core.log").write_text("\n".join(lines) + "\n")


def test_log_stream_serves_the_tail_of_the_core_log(api: Api) -> None:
    write_core_log(api, CORE_LINES)
    assert api.client.get("/v1/log/stream").json() == {"success": True, "response": CORE_LINES}
    assert api.ok("GET", "/v1/log/stream", params={"lines": 3}) == CORE_LINES[-3:]
    assert api.ok("GET", "/v1/log/stream/factorytx_core.log", params={"lines": 3}) == CORE_LINES[-3:]
    assert api.client.get("/v1/log/stream", params={"lines": 0}).status_code == 400


def test_web_log_holds_the_api_own_lines(api: Api) -> None:
    api.ok("POST", "/v1/config", json=rest_examples()["GET /v1/config"])
    web = api.ok("GET", "/v1/log/stream/factorytx_web.log")
    assert any(" api INFO config saved to " in line for line in web)


@pytest.mark.parametrize("name", [
    "../conf.d/config.json", "..%2fconf.d%2fconfig.json", "%2e%2e%2fconf.d%2fconfig.json",
    "%2E%2E%2Fconf.d%2Fconfig.json", "/etc/passwd", "%2fetc%2fpasswd", "..", "factorytx_core.log%00.txt",
    "dataflow-console.log", "factorytx_core.log.1", "....//conf.d//config.json",
])
def test_log_names_outside_the_two_logs_are_404(api: Api, name: str) -> None:
    api.ok("POST", "/v1/config", json=rest_examples()["GET /v1/config"])
    (api.home / "log" / "dataflow-console.log").write_text("CONSOLE OUTPUT\n")
    answer = api.client.get(f"/v1/log/stream/{name}")
    assert answer.status_code == 404
    assert answer.json()["success"] is False
    for leaked in ("abc123", "root:x:", "CONSOLE OUTPUT"):
        assert leaked not in answer.text


def test_secrets_are_redacted_in_served_logs_and_by_the_log_filter(api: Api) -> None:
    api.ok("POST", "/v1/config", json=rest_examples()["GET /v1/config"])  # API_key abc123
    write_core_log(api, ["2017-11-09 23:18:05,699 main transmit INFO posting with key abc123 done"])
    assert api.ok("GET", "/v1/log/stream") == [
        "2017-11-09 23:18:05,699 main transmit INFO posting with key ******** done"]
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "password %s in %s", ("hunter22", "db"), None)
    assert RedactingFilter({"hunter22"}).filter(record)
    assert logging.Formatter(LOG_FORMAT).format(record).endswith("x INFO password ******** in db")


def test_meta_lists_every_registered_component(api: Api) -> None:
    objects = {o["id"]: o for o in api.ok("GET", "/v1/meta")["objects"]}
    assert set(objects) == {"data_receiver", "data_receiver_asset", "data_transmit", "transforms", "parsers"}
    assert [s["id"] for s in objects["data_receiver"]["subtypes"]] == registry.receivers.tags()
    assert [s["id"] for s in objects["data_transmit"]["subtypes"]] == registry.transmits.tags()
    assert [s["id"] for s in objects["transforms"]["subtypes"]] == registry.transforms.tags()
    for subtype in objects["data_receiver_asset"]["subtypes"]:
        assert subtype["data_receiver"] == [subtype["id"]]
    assert {"id": "sql", "name": "SQL"} in objects["data_receiver"]["subtypes"]


def test_meta_object_gives_schema_and_new_template(api: Api) -> None:
    body = api.ok("GET", "/v1/meta/data_receiver", params={"subtype": "localfile"})
    assert (body["subtype"], body["object"]) == ("localfile", "data_receiver")
    schema = body["schema"]["schema"]
    definition = schema["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    assert {"data_receiver_name", "protocol", "streams", "connections", "parsers"} <= set(definition["properties"])
    assert {"data_receiver_name", "connections", "parsers", "streams"} <= set(definition["required"])
    assert definition["properties"]["poll_interval"]["default"] == 5.0
    template = body["new_template"]["schema"]
    assert template["protocol"] == "localfile" and template["streams"][0]["asset"] == "<Please input asset>"
    asset = api.ok("GET", "/v1/meta/data_receiver_asset", params={"subtype": "sql"})
    assert "query" in asset["schema"]["schema"]["$defs"]["SqlStream"]["properties"]
    transmit = api.ok("GET", "/v1/meta/data_transmit")  # the subtype defaults to remotedatapost
    assert transmit["subtype"] == "remotedatapost"
    assert api.client.get("/v1/meta/nothing").status_code == 404
    missing = api.client.get("/v1/meta/data_receiver", params={"subtype": "tacomania"})
    assert missing.status_code == 404 and "unknown subtype 'tacomania'" in missing.json()["error"]["text"]


def test_meta_shows_the_choices_of_enumerated_settings(api: Api) -> None:
    sql = api.ok("GET", "/v1/meta/data_receiver", params={"subtype": "sql"})["schema"]["schema"]["$defs"]
    assert sql["SqlConnection"]["properties"]["database_type"]["enum"] == [
        "mssql", "postgresql", "mysql", "mariadb", "sqlite"]
    assert sql["StateField"]["properties"]["data_type"]["enum"] == ["timestamp", "integer", "float", "string"]
    csv = api.ok("GET", "/v1/meta/parsers", params={"subtype": "csv"})["schema"]["schema"]
    assert csv["$defs"]["CsvParser"]["properties"]["file_format"]["enum"] == ["csv"]
    mqtt = api.ok("GET", "/v1/meta/data_receiver", params={"subtype": "mqtt"})["schema"]["schema"]["$defs"]
    assert mqtt["MqttReceiver"]["properties"]["payload_format"]["enum"] == ["json", "value", "sparkplug_b"]
    assert mqtt["MqttStream"]["properties"]["payload_format"]["enum"] == ["json", "value", "sparkplug_b"]
    # the SQL template's placeholder in database_type is still a warning, not an error
    template = api.ok("GET", "/v1/config/templates/sql")
    placeholder = template["data_receiver"][0]["connections"][0]["database_type"]
    violations = api.client.post("/v1/config/validate", json=template).json()["response"]["violations"]
    assert {"description": f"template placeholder not filled in: {placeholder!r}", "level": "warning",
            "json_path": ["data_receiver", 0, "connections", 0, "database_type"]} in violations
    assert all(v["level"] == "warning" for v in violations)


def test_status_shape_and_units(api: Api) -> None:
    api.ok("POST", "/v1/config", json=rest_examples()["GET /v1/config"])
    body = api.client.get("/v1/status").json()
    assert body["success"] is True
    response = body["response"]
    assert set(response) == {"backup", "last_data_transmit", "machine_info", "factorytx"}
    info = response["machine_info"]
    for part in ("disk", "memory"):
        assert set(info[part]) == {"total_gb", "percent_free", "percent_used", "used_gb", "available_gb"}
        assert all(isinstance(v, float) for v in info[part].values())
        assert info[part]["percent_used"] + info[part]["percent_free"] == pytest.approx(100)
    assert info["memory"]["total_gb"] == pytest.approx(psutil.virtual_memory().total / 1024**3)
    assert info["memory"]["used_gb"] + info["memory"]["available_gb"] == pytest.approx(info["memory"]["total_gb"])
    assert info["cpu"]["cpu_count"] == float(psutil.cpu_count()) and 0 <= info["cpu"]["percent"] <= 100
    assert response["factorytx"]["status"] == "stopped"
    assert response["factorytx"]["services"] == {
        "localfile_0": {"component_type": "Receiver", "protocol": "localfile", "status": "stopped", "streams": 1,
                        "streams_failing": 0},
        "transmit_0": {"component_type": "Transmit", "transmit_type": "remotedatapost", "status": "stopped",
                       "paused": False}}
    assert response["last_data_transmit"]["transmit_0"]["records_delivered"] == 0
    assert response["backup"]["config"]["error_code"] == "not_configured"


def test_cpu_is_measured_over_a_second_so_a_page_load_never_reads_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "_cpu", {"at": None, "percent": None})
    def burn() -> None:  # the machine is busy during the first measure
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            pass

    burner = threading.Thread(target=burn)
    burner.start()
    started = time.monotonic()
    first = status.cpu_percent()  # starts the first measure and waits its second
    burner.join()
    assert time.monotonic() - started >= status.CPU_INTERVAL * 0.95
    assert status.cpu_percent() == first  # a moment later: the same measure, not a fresh ~0
    assert first > 0


def test_streams_lists_configured_streams_with_their_markers(api: Api) -> None:
    assert api.client.get("/v1/streams").json() == {"success": True, "response": []}
    api.ok("POST", "/v1/config", json=rest_examples()["GET /v1/config"])
    ledger = Ledger(ledger_path(api.home))
    marker = Marker(component="counter_0", component_type="Transform", asset="ArmRobot_1", stream_type="cycle",
                    category="transform", timestamp="2018-05-09 21:39:22.000000", level="warning",
                    message="a.csv: column 'timestamp' is missing")
    ledger.set_marker(marker)
    ledger.set_marker(msgspec.structs.replace(marker, asset="other"))  # another stream's
    ledger.record_received("localfile_0", "ArmRobot_1:cycle", 12)
    ledger.record_delivery("transmit_0", "ArmRobot_1:cycle", 10, "2018-05-09T21:39:20.000000Z")
    assert api.ok("GET", "/v1/streams") == [{
        "stream": "ArmRobot_1:cycle", "asset": "ArmRobot_1", "stream_type": "cycle", "data_receiver": "localfile_0",
        "records_received": 12,
        "records_delivered": {"transmit_0": 10}, "last_timestamp": "2018-05-09T21:39:20.000000Z",
        "state": "warning", "records_per_minute": [], "markers": [msgspec.to_builtins(marker)]}]


def test_metrics_read_the_ledger(api: Api) -> None:
    ledger = Ledger(ledger_path(api.home))
    ledger.record_received("files", "a:b", 7)
    ledger.record_delivery("out", "a:b", 5, None)
    ledger.mark_outbox("out", 2, 300)
    ledger.mark_success("out")
    ledger.mark_error("out", "HTTP 503")
    text = api.client.get("/metrics").text
    assert 'factoryflow_records_received_total{receiver="files",stream="a:b"} 7.0' in text
    assert 'factoryflow_records_delivered_total{stream="a:b",transmit="out"} 5.0' in text \
        or 'factoryflow_records_delivered_total{transmit="out",stream="a:b"} 5.0' in text
    assert 'factoryflow_transmit_outbox_records{transmit="out"} 2.0' in text
    assert 'factoryflow_transmit_outbox_bytes{transmit="out"} 300.0' in text
    assert 'factoryflow_component_errors_total{component="out",component_type="Transmit"} 1.0' in text
    assert "factoryflow_dataflow_up 0.0" in text
    lag = [line for line in text.splitlines() if line.startswith("factoryflow_transmit_lag_seconds{")]
    assert len(lag) == 1 and 0 <= float(lag[0].split()[-1]) < 60


def test_openapi_document_lists_every_endpoint(api: Api) -> None:
    paths = api.client.get("/schema/openapi.json").json()["paths"]
    assert set(paths) == {
        "/v1/config", "/v1/config/validate", "/v1/config/templates", "/v1/config/templates/{protocol}",
        "/v1/ftx/start", "/v1/ftx/stop", "/v1/ftx/restart", "/v1/log/stream", "/v1/log/stream/{log_filename}",
        "/v1/meta", "/v1/meta/{object_id}", "/v1/status", "/v1/streams", "/v1/restream", "/metrics"}
    assert "500" in paths["/v1/restream"]["post"]["responses"]


def test_home_is_created(tmp_path: Path) -> None:
    from api.app import create_app

    create_app(tmp_path / "new" / "home")
    assert (tmp_path / "new" / "home").is_dir()
