"""Property-based tests of the whole API from its own OpenAPI document (schemathesis)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import given, settings
from litestar.testing import TestClient
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.limits import MAX_DEPTH, MAX_NUMBER_DIGITS
from api.supervisor import Supervisor
from tests.specs import rest_examples

KEY = "plant-floor-key"


@pytest.mark.parametrize("keyed", [False, True], ids=["open", "with-api-key"])
def test_every_operation_answers_as_its_schema_declares(tmp_path: Path, keyed: bool) -> None:
    """Every operation fuzzed from the OpenAPI document: each answer's status is declared and
    its body matches the declared schema; no 5xx but restream's documented 500. With an API
    key set, each operation is also called without it (401 only) and with a wrong one."""
    home = tmp_path / "home"
    (home / "conf.d").mkdir(parents=True)
    # a saved config with placeholders: valid, so restream and streams have names to work
    # with, but not runnable, so no fuzzed /v1/ftx/start launches a dataflow
    (home / "conf.d" / "config.json").write_text(json.dumps(rest_examples()["POST /v1/config"]))
    app = create_app(home, supervisor=Supervisor(home, stop_timeout=10), restream_timeout=2,
                     api_key=KEY if keyed else None)
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app, headers={"X-API-Key": KEY})
    statuses: dict[str, Counter[int]] = {}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 16
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        statuses[label] = Counter()
        try:
            fuzz(operation, label, statuses[label], {"X-API-Key": KEY} if keyed else {})
            if keyed:
                refused = Counter()
                fuzz(operation, label, refused, {"X-API-Key": "wrong"}, examples=5)
                fuzz(operation, label, refused, {}, examples=5)
                assert set(refused) == {401}, refused
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{label}: {exc}")
    assert failures == []
    assert all(sum(counter.values()) > 0 for counter in statuses.values()), statuses
    assert all(code < 500 for label, counter in statuses.items() for code in counter
               if label != "POST /v1/restream"), statuses
    total = sum((counter for counter in statuses.values()), Counter())
    print(f"\n{'with' if keyed else 'without'} an API key: {sum(total.values())} requests over "
          f"{len(operations)} operations, by status: {dict(sorted(total.items()))}")


def fuzz(operation: schemathesis.APIOperation, label: str, seen: Counter[int], headers: dict[str, str],
         examples: int = 25) -> None:
    """Call ``operation`` with generated requests; fail on an undeclared status, a body off its
    schema, or any 5xx but restream's documented 500."""

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(hypothesis.HealthCheck))
    @given(case=operation.as_strategy())
    def call(case: schemathesis.Case) -> None:
        response = case.call(headers=headers)
        seen[response.status_code] += 1
        if label == "POST /v1/restream" and response.status_code == 500:
            body = response.json()  # documented: unknown receiver or stream, with the reason
            assert body["success"] is False and body["response"] == "Restream failed"
            assert body["error"]["text"].startswith(("unknown data receiver", "receiver "))
        else:
            case.validate_response(response, checks=[not_a_server_error])
        case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                                  response_schema_conformance])

    call()


def test_the_schema_page_loads_nothing_from_the_internet(tmp_path: Path) -> None:
    app = create_app(tmp_path / "home", supervisor=Supervisor(tmp_path / "home"))
    with TestClient(app) as client:
        page = client.get("/schema")
        assert page.status_code == 200 and "SwaggerUIBundle" in page.text
        assert re.findall(r"https?://", page.text.split("<script>")[0]) == []  # head: no remote asset
        assets = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", page.text)
        assert sorted(assets) == ["/schema/assets/favicon-32x32.png", "/schema/assets/swagger-ui-bundle.js",
                                  "/schema/assets/swagger-ui-standalone-preset.js",
                                  "/schema/assets/swagger-ui.css"]
        for asset in assets:
            answer = client.get(asset)
            assert answer.status_code == 200 and len(answer.content) > 100, asset
        operations = [(method, path, op) for path, item in client.get("/schema/openapi.json").json()["paths"].items()
                      for method, op in item.items()]
    assert len(operations) == 16
    summaries = {f"{m.upper()} {p}": op.get("summary") for m, p, op in operations}
    assert all(s and s[0].isupper() and "callable" not in s.lower() for s in summaries.values()), summaries
    assert summaries["GET /v1/config"] == "Read the configuration"


def test_invalid_json_is_refused_naming_line_and_column(tmp_path: Path) -> None:
    with TestClient(create_app(tmp_path / "home", supervisor=Supervisor(tmp_path / "home"))) as client:
        for path in ("/v1/config", "/v1/config/validate", "/v1/restream"):
            answer = client.post(path, content=b'{"data_receiver": [],\n  "transforms": [\n  ],, "x": 1}',
                                 headers={"content-type": "application/json"})
            assert answer.status_code == 400
            assert answer.json()["error"]["text"] == ("invalid JSON at line 3 column 5: Expecting property "
                                                      "name enclosed in double quotes")


def test_bodies_beyond_the_bounds_are_400_naming_the_limit(tmp_path: Path) -> None:
    deep = b"[" * 10_000 + b"]" * 10_000
    just_too_deep = b'{"a": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
    huge = b'{"data_receiver": [], "x": ' + b"7" * 5_000 + b"}"
    with TestClient(create_app(tmp_path / "home", supervisor=Supervisor(tmp_path / "home"))) as client:
        for path in ("/v1/config", "/v1/config/validate", "/v1/restream"):
            for body in (deep, just_too_deep):
                for content_type in ("application/json", "text/plain", "application/x-www-form-urlencoded"):
                    answer = client.post(path, content=body, headers={"content-type": content_type})
                    assert answer.status_code == 400, (path, content_type, answer.text)
                    assert answer.json()["error"]["text"] == (f"JSON nested deeper than {MAX_DEPTH} levels; "
                                                              f"at most {MAX_DEPTH} are accepted")
            answer = client.post(path, content=huge, headers={"content-type": "application/json"})
            assert answer.status_code == 400
            assert answer.json()["error"]["text"] == (f"a number of 5000 characters; at most {MAX_NUMBER_DIGITS} "
                                                      "are accepted")
            for constant in (b"NaN", b"-Infinity"):
                answer = client.post(path, content=b'{"x": ' + constant + b"}")
                assert answer.status_code == 400 and "is not a JSON value" in answer.json()["error"]["text"]
        answer = client.post("/v1/config/validate", content=b'{"a": ' + b"[" * (MAX_DEPTH - 1) + b"]" *
                             (MAX_DEPTH - 1) + b"}")
        assert answer.status_code == 200  # at the limit: validated (and refused as a config)


def test_an_unexpected_error_is_a_500_naming_no_exception(tmp_path: Path) -> None:
    class Broken(Supervisor):
        def info(self) -> dict[str, Any]:
            raise RuntimeError("internal detail /secret/path")

    home = tmp_path / "home"
    with TestClient(create_app(home, supervisor=Broken(home))) as client:
        answer = client.get("/v1/status")
    assert answer.status_code == 500
    assert answer.json() == {"success": False, "response": {}, "error": {"code": 500, "text": (
        "internal error in GET /v1/status; the API's log (GET /v1/log/stream/factorytx_web.log) has the details")}}
