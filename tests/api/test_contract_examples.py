"""Every request/response pair of ``shared/specs/factorytx-rest-api.txt`` that factoryflow
implements, as one table: the documented request, and what of the documented answer holds.

Where factoryflow answers more than the example (its additions: ``error`` in failures,
``meta.violations``), the documented keys and values are checked and the rest is allowed.
Where it deliberately differs, the row says so: a secret in a saved config is answered as
``"********"``, and a placeholder is a warning, so the validate example passes with warnings.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.specs import opcua_template_response, rest_examples

Check = Callable[[Any], None]


def contains(expected: Any, actual: Any, where: str = "") -> None:
    """Every key and value of ``expected`` is in ``actual`` (lists: element by element)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}/{key} missing in {sorted(actual)}"
            contains(value, actual[key], f"{where}/{key}")
    elif isinstance(expected, list):  # each documented item is among the answer's, in order
        assert isinstance(actual, list), f"{where}: {actual!r}"
        rest = iter(actual)
        for index, want in enumerate(expected):
            assert any(_holds(want, got) for got in rest), f"{where}/{index}: {want!r} not in {actual!r}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def _holds(expected: Any, actual: Any) -> bool:
    try:
        contains(expected, actual)
    except AssertionError:
        return False
    return True


def _schema(response: Any) -> Any:
    """The object schema of a meta answer (msgspec puts it under ``$defs``, by ``$ref``)."""
    schema = response["schema"]["schema"]
    return schema["$defs"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema


def _saved_example(body: Any) -> None:
    sent = rest_examples()["POST /v1/config"]
    sent["data_transmit"][0]["API_key"] = "********"  # "<...>asdfasdf" is typed in: a secret
    contains({"response": sent, "success": True}, body)
    assert set(body["meta"]) >= {"last_modified"}


def _status(body: Any) -> None:
    response = body["response"]
    assert set(response) >= {"backup", "last_data_transmit", "machine_info", "factorytx"}
    assert set(response["backup"]["config"]) == {"last_success", "error_code", "error_message"}
    assert set(response["machine_info"]) == {"disk", "cpu", "memory"}
    assert set(response["machine_info"]["cpu"]) == {"percent", "cpu_count"}
    for part in ("disk", "memory"):
        assert set(response["machine_info"][part]) == {"total_gb", "percent_free", "percent_used", "used_gb",
                                                       "available_gb"}
    assert response["factorytx"]["status"] in ("running", "stopped", "failed")  # as the contract lists
    assert {s["status"] for s in response["factorytx"]["services"].values()} <= {"running", "stopped", "unknown"}


def _meta_localfile_csv(body: Any) -> None:
    response = body["response"]
    assert body["success"] is True and response["subtype"] == "localfile_csv"
    schema = _schema(response)
    assert {"data_receiver_name", "protocol", "streams", "connections", "parsers"} <= set(schema["required"])
    assert schema["properties"]["protocol"]["enum"] == ["localfile"]
    assert response["new_template"]["schema"]["protocol"] == "localfile"


def _meta_transmit(body: Any) -> None:
    assert body["success"] is True and body["response"]["subtype"] == "remotedatapost"
    assert "base_url" in _schema(body["response"])["properties"]


def _streams(body: Any) -> None:
    assert body["success"] is True
    assert [(s["stream"], s["asset"], s["stream_type"], s["data_receiver"], s["markers"])
            for s in body["response"]] == [("asset_0:cycle", "asset_0", "cycle", "receiver_0", [])]


def _log_lines(body: Any) -> None:
    assert body["success"] is True and all(isinstance(line, str) for line in body["response"])


def _meta_objects(body: Any) -> None:
    objects = {o["id"]: o for o in body["response"]["objects"]}
    assert {"data_receiver", "data_receiver_asset", "data_transmit", "transforms"} <= set(objects)
    assert all({"id", "name"} <= set(s) for o in objects.values() for s in o.get("subtypes", []))
    assert all(s["data_receiver"] == [s["id"]] for s in objects["data_receiver_asset"]["subtypes"])


def _templates(body: Any) -> None:
    assert body["success"] is True
    assert body["response"][0] == {"configuration": {"data_receiver": [], "transforms": [], "data_transmit": []},
                                   "name": "Basic", "description": "A basic template without data_receiver, "
                                   "transforms, and data_transmit settings"}
    assert all(set(t) == {"configuration", "name", "description"} for t in body["response"])


def _unknown_parser() -> Any:
    broken = copy.deepcopy(rest_examples()["POST /v1/config/validate"])
    broken["data_receiver"][0]["streams"][0]["parser"] = "spreadsheets"
    return broken


def _not_a_list() -> Any:
    return {**rest_examples()["POST /v1/config"], "data_transmit": {"transmit_name": "transmit_0"}}


#: (documented request, body, HTTP status, the documented answer: a dict it contains, or a check)
EXAMPLES: list[tuple[str, Callable[[], Any] | None, int, dict[str, Any] | Check]] = [
    ("GET /v1/config", None, 200, {"success": True, "response": rest_examples()["POST /v1/config"] | {
        "data_transmit": [rest_examples()["POST /v1/config"]["data_transmit"][0] | {"API_key": "********"}]}}),
    ("GET /v1/config/templates", None, 200, _templates),
    ("GET /v1/config/templates/opcua", None, 200, opcua_template_response()),
    ("GET /v1/config/templates/tacomania", None, 200,
     {"response": "Requested configuration is not available", "success": False}),
    ("POST /v1/config", lambda: rest_examples()["POST /v1/config"], 200, _saved_example),
    ("POST /v1/config", _not_a_list, 200, {"response": {"violations": [{
        "description": "'data_transmit' section is not defined as a list", "json_path": ["data_transmit"],
        "level": "error"}], "status": "failed"}, "success": False}),
    ("POST /v1/config", dict, 200, {"response": {"violations": [{"json_path": [], "level": "error"}],
                                                 "status": "failed"}, "success": False}),
    ("POST /v1/config/validate", lambda: rest_examples()["POST /v1/config/validate"], 200,
     {"response": {"status": "passed"}, "success": True}),
    ("POST /v1/config/validate", _unknown_parser, 200, {"response": {"status": "failed", "violations": [{
        "description": 'No parser named "spreadsheets".', "level": "error",
        "json_path": ["data_receiver", 0, "streams", 0, "parser"]}]}, "success": False}),
    ("POST /v1/ftx/start", None, 200, {"response": "failed", "success": False}),  # placeholders: cannot run
    ("POST /v1/ftx/restart", None, 200, {"response": "failed", "success": False}),
    ("POST /v1/ftx/stop", None, 200, {"response": "stopped", "success": True}),
    ("GET /v1/log/stream", None, 200, _log_lines),
    ("GET /v1/log/stream/factorytx_web.log", None, 200, _log_lines),
    ("GET /v1/meta", None, 200, _meta_objects),
    ("GET /v1/meta/data_receiver?subtype=localfile_csv", None, 200, _meta_localfile_csv),
    ("GET /v1/meta/transmit", None, 200, _meta_transmit),
    ("GET /v1/meta/transmit?subtype=anything", None, 200, _meta_transmit),  # "the subtype is ignored"
    ("GET /v1/status", None, 200, _status),
    ("GET /v1/streams", None, 200, _streams),
    ("POST /v1/restream", lambda: {"receiver_1": [{"asset": "asset_38", "stream_type": "quality"}]}, 500,
     {"success": False, "response": "Restream failed"}),  # no such receiver in the saved example
    ("POST /v1/restream", lambda: {"receiver_0": [{"asset": "asset_0", "stream_type": "cycle"}]}, 200,
     {"success": True}),  # stopped: scheduled for the next start
]


@pytest.mark.parametrize(("request_line", "body", "status", "expected"), EXAMPLES,
                         ids=[f"{i}-{e[0]}" for i, e in enumerate(EXAMPLES)])
def test_the_contract_examples(api: Api, request_line: str, body: Callable[[], Any] | None, status: int,
                               expected: dict[str, Any] | Check) -> None:
    api.ok("POST", "/v1/config", json=rest_examples()["POST /v1/config"])  # the example installation
    method, path = request_line.split(" ", 1)
    answer = api.client.request(method, path, **({"json": body()} if body else {}))
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    if callable(expected):
        expected(answer.json())
    else:
        contains(expected, answer.json())
