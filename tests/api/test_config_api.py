"""``/v1/config``, ``/v1/config/validate`` and ``/v1/config/templates`` with the seed's examples."""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflows import registry
from dataflows.config import validate
from tests.api.conftest import Api, make_api
from tests.specs import opcua_template_response, rest_examples
from tests.specs import templates as spec_templates

LAST_MODIFIED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


def saved(api: Api) -> Any:
    return json.loads((api.home / "conf.d" / "config.json").read_text())


def test_get_config_of_a_fresh_install_is_empty(api: Api) -> None:
    body = api.client.get("/v1/config").json()
    assert body == {"success": True, "meta": {"last_modified": None},
                    "response": {"data_receiver": [], "transforms": [], "data_transmit": []}}


def test_post_config_example_is_saved_and_secrets_are_redacted(api: Api) -> None:
    example = rest_examples()["POST /v1/config"]
    answer = api.client.post("/v1/config", json=example).json()
    assert answer["success"] is True
    assert LAST_MODIFIED.match(answer["meta"]["last_modified"])
    expected = copy.deepcopy(example)
    expected["data_transmit"][0]["API_key"] = "********"
    assert answer["response"] == expected
    assert saved(api) == example  # the file holds the real key
    got = api.client.get("/v1/config").json()
    assert got["response"] == expected and got["success"] is True
    assert got["meta"]["last_modified"] == answer["meta"]["last_modified"]


def test_posting_the_redacted_secret_back_keeps_the_stored_one(api: Api) -> None:
    example = rest_examples()["GET /v1/config"]  # API_key "abc123"
    api.ok("POST", "/v1/config", json=example)
    shown = api.ok("GET", "/v1/config")
    assert shown["data_transmit"][0]["API_key"] == "********"
    shown["data_receiver"][0]["poll_interval"] = 7
    api.ok("POST", "/v1/config", json=shown)
    stored = saved(api)
    assert stored["data_transmit"][0]["API_key"] == "abc123"
    assert stored["data_receiver"][0]["poll_interval"] == 7
    # a redacted value where nothing is stored is refused, naming where
    shown["data_transmit"][0]["transmit_name"] = "renamed"
    body = api.client.post("/v1/config", json=shown).json()
    assert body["success"] is False
    assert ["data_transmit", 0, "API_key"] in [v["json_path"] for v in body["response"]["violations"]]


def test_invalid_config_is_refused_and_the_saved_one_untouched(api: Api) -> None:
    api.ok("POST", "/v1/config", json=rest_examples()["POST /v1/config"])
    before = (api.home / "conf.d" / "config.json").read_bytes()
    bad = {**rest_examples()["POST /v1/config"], "data_transmit": {"transmit_name": "x"}}
    answer = api.client.post("/v1/config", json=bad)
    assert answer.status_code == 200
    body = answer.json()
    assert body["success"] is False
    assert body["response"]["status"] == "failed"
    assert {"description": "'data_transmit' section is not defined as a list", "json_path": ["data_transmit"],
            "level": "error"} in body["response"]["violations"]
    assert (api.home / "conf.d" / "config.json").read_bytes() == before


def test_validate_passes_the_example_and_fails_an_unknown_parser(api: Api) -> None:
    example = rest_examples()["POST /v1/config/validate"]
    body = api.client.post("/v1/config/validate", json=example).json()
    assert body["success"] is True and body["response"]["status"] == "passed"
    assert all(v["level"] == "warning" for v in body["response"]["violations"])  # its placeholders
    broken = copy.deepcopy(example)
    broken["data_receiver"][0]["streams"][0]["parser"] = "spreadsheets"
    body = api.client.post("/v1/config/validate", json=broken).json()
    assert body["success"] is False and body["response"]["status"] == "failed"
    assert {"description": 'No parser named "spreadsheets".', "level": "error",
            "json_path": ["data_receiver", 0, "streams", 0, "parser"]} in body["response"]["violations"]
    assert not (api.home / "conf.d" / "config.json").exists()  # validating saves nothing


def test_templates_are_the_documented_ones_plus_one_per_receiver(api: Api) -> None:
    served = api.ok("GET", "/v1/config/templates")
    assert served[:5] == spec_templates()
    protocols = {r["protocol"] for t in served for r in t["configuration"]["data_receiver"]}
    assert protocols == set(registry.receivers.tags())
    for template in served:
        assert set(template) == {"configuration", "name", "description"}
        errors = [v for v in validate(template["configuration"]) if v.level == "error"]
        assert errors == [], template["name"]


def test_template_by_protocol_and_unknown_protocol(api: Api) -> None:
    assert api.client.get("/v1/config/templates/opcua").json() == opcua_template_response()
    assert api.client.get("/v1/config/templates/tacomania").json() == {
        "response": "Requested configuration is not available", "success": False}


def test_concurrent_posts_never_interleave_a_config_write(api: Api) -> None:
    example = rest_examples()["GET /v1/config"]
    configs = []
    for index in range(8):
        config = copy.deepcopy(example)
        config["data_receiver"][0]["data_receiver_name"] = f"receiver_{index}"
        config["data_receiver"][0]["streams"] = [
            {"asset": f"asset_{index}_{n}", "stream_type": "cycle", "file_filter": ["*.csv"]} for n in range(200)]
        configs.append(config)
    answers: list[int] = []
    threads = [threading.Thread(target=lambda c=c: answers.append(
        api.client.post("/v1/config", json=c).status_code)) for c in configs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 8
    assert saved(api) in configs  # whole, one of them
    assert sorted(p.name for p in (api.home / "conf.d").iterdir()) == ["config.json"]  # no temp files left


def test_request_bodies_are_size_limited(api: Api) -> None:
    api.ok("POST", "/v1/config", json=rest_examples()["GET /v1/config"])
    before = (api.home / "conf.d" / "config.json").read_bytes()
    huge = copy.deepcopy(rest_examples()["GET /v1/config"])
    huge["data_receiver"][0]["streams"][0]["asset"] = "x" * (2 * 1024 * 1024)
    answer = api.client.post("/v1/config", json=huge)
    assert answer.status_code == 413
    assert answer.json()["success"] is False
    assert (api.home / "conf.d" / "config.json").read_bytes() == before


@pytest.fixture
def keyed_api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path / "home", api_key="s3cret-key")


def test_api_key_is_required_when_set(keyed_api: Api) -> None:
    for path in ("/v1/config", "/v1/status", "/schema/openapi.json", "/metrics"):
        refused = keyed_api.client.get(path)
        assert refused.status_code == 401, path
        assert refused.json()["success"] is False
        assert keyed_api.client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
        assert keyed_api.client.get(path, headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert keyed_api.client.post("/v1/config", json=rest_examples()["GET /v1/config"]).status_code == 401
    assert not (keyed_api.home / "conf.d" / "config.json").exists()


def test_a_config_with_a_list_for_a_tag_is_refused_not_a_500(api: Api) -> None:
    for path in ("/v1/config", "/v1/config/validate"):
        answer = api.client.post(path, json={"data_receiver": [{"protocol": []}]})
        assert answer.status_code == 200 and answer.json()["success"] is False, answer.text
        violations = answer.json()["response"]["violations"]
        assert violations[0]["json_path"] == ["data_receiver", 0, "protocol"]
        assert violations[0]["description"].startswith("unknown protocol []; accepted: ")


KAFKA_SECRETS = {"sasl.password": "kafka-pass-1", "ssl.key.password": "key-pass-2",
                 "sasl.oauthbearer.client.secret": "oauth-secret-3", "sasl.username": "collector",
                 "linger.ms": 5}


def secret_config() -> dict[str, Any]:
    """A config with librdkafka secrets in ``options`` and credentials inside a URL."""
    config = copy.deepcopy(rest_examples()["GET /v1/config"])
    config["data_transmit"] = [
        {"transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": "broker:9092",
         "topic": "plant", "options": KAFKA_SECRETS},
        {**config["data_transmit"][0], "base_url": "https://edge:url-pass-4@plant.sightmachine.io"}]
    return config


def test_kafka_option_secrets_and_url_passwords_are_redacted_and_kept(api: Api) -> None:
    api.ok("POST", "/v1/config", json=secret_config())
    shown = api.ok("GET", "/v1/config")
    assert shown["data_transmit"][0]["options"] == {
        "sasl.password": "********", "ssl.key.password": "********",
        "sasl.oauthbearer.client.secret": "********", "sasl.username": "collector", "linger.ms": 5}
    assert shown["data_transmit"][1]["base_url"] == "https://edge:********@plant.sightmachine.io"
    text = json.dumps(shown)
    assert not any(secret in text for secret in ("kafka-pass-1", "key-pass-2", "oauth-secret-3", "url-pass-4"))
    shown["data_transmit"][0]["options"]["linger.ms"] = 10
    api.ok("POST", "/v1/config", json=shown)  # posting the redacted config back keeps every secret
    expected = secret_config()
    expected["data_transmit"][0]["options"]["linger.ms"] = 10
    assert saved(api) == expected
    logging.getLogger("api.test").warning("connecting with kafka-pass-1 to https://edge:url-pass-4@plant")
    web_log = (api.home / "log" / "factorytx_web.log").read_text()
    assert "connecting with ******** to https://edge:********@plant" in web_log
    assert "kafka-pass-1" not in web_log and "url-pass-4" not in web_log
    # a URL password where none is stored is refused, naming where
    shown["data_transmit"][1]["transmit_name"] = "renamed"
    body = api.client.post("/v1/config", json=shown).json()
    assert body["success"] is False
    assert ["data_transmit", 1, "base_url"] in [v["json_path"] for v in body["response"]["violations"]]
