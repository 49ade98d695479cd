"""No secret leaves the control API: every connector's example with a distinct secret in every
secret-bearing key (and librdkafka secret option), and a password in every URL, is saved;
the dataflow's side (transmit errors, stream markers, log lines) is made to echo every one of
them; then every endpoint of the OpenAPI document is called (each template, meta object and
log), and no answer holds any of them."""

from __future__ import annotations

import copy
import itertools
import json
import re
from typing import Any, get_args, get_origin

import msgspec

from dataflows import registry
from dataflows.config import leaves
from dataflows.ledger import Ledger, Marker, ledger_path
from dataflows.sdk import field_meta, unwrap
from dataflows.secrets import REDACTED
from tests.api.conftest import Api

_counter = itertools.count()


def _secret(planted: list[str]) -> str:
    """A fresh secret, remembered in ``planted``."""
    planted.append(f"Pl4nted-{next(_counter)}-Zq")
    return planted[-1]


def _plant(value: dict[str, Any], cls: type[msgspec.Struct], planted: list[str]) -> None:
    """Give every secret field of ``cls`` (and of the Structs ``value`` holds) a fresh secret."""
    for info in msgspec.structs.fields(cls):
        meta = field_meta(info.type)
        if meta.get("secret"):
            value[info.encode_name] = _secret(planted)
        elif meta.get("secret_keys"):
            key = next(k for k in ("sasl.password", "ssl.key.password", "password", "token")
                       if re.search(meta["secret_keys"], k))
            value.setdefault(info.encode_name, {})[key] = _secret(planted)
        elif isinstance(value.get(info.encode_name), (dict, list)):
            bare = unwrap(info.type)
            items = value[info.encode_name] if isinstance(value[info.encode_name], list) else [value[info.encode_name]]
            inner = unwrap(get_args(bare)[0]) if get_origin(bare) is list else bare
            if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
                for item in items:
                    if isinstance(item, dict):
                        _plant(item, inner, planted)


def planted_config() -> tuple[dict[str, Any], list[str]]:
    """Every receiver's and transmit's example in one config, secrets planted; and the secrets."""
    registry.load_all()
    planted: list[str] = []
    receivers = []
    for index, cls in enumerate(registry.receivers.structs()):
        example = {**copy.deepcopy(cls.example), "data_receiver_name": f"receiver_{index}"}
        _plant(example, cls, planted)
        receivers.append(example)
    transmits = []
    for index, cls in enumerate(registry.transmits.structs()):
        example = {**copy.deepcopy(cls.example), "transmit_name": f"transmit_{index}"}
        _plant(example, cls, planted)
        transmits.append(example)
    config = {"data_receiver": receivers, "transforms": [], "data_transmit": transmits}
    for path, value in list(leaves(config)):  # a password in every URL
        if isinstance(value, str) and re.match(r"https?://", value):
            target: Any = config
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value.replace("://", f"://operator:{_secret(planted)}@", 1)
    return config, planted


def echo_everything(api: Api, config: dict[str, Any], planted: list[str]) -> None:
    """What a dataflow writes when its endpoints fail with the secrets in their messages."""
    urls = [v for _, v in leaves(config) if isinstance(v, str) and "@" in v]
    text = f"connect to {' and '.join(urls)} failed; tried {', '.join(planted)}"
    ledger = Ledger(ledger_path(api.home))
    try:
        for transmit in config["data_transmit"]:
            ledger.mark_error(transmit["transmit_name"], text)
        for receiver in config["data_receiver"]:
            for stream in receiver["streams"]:
                ledger.set_marker(Marker(component=receiver["data_receiver_name"], component_type="Receiver",
                                         asset=stream["asset"], stream_type=stream["stream_type"],
                                         category="query", timestamp="2026-12-06 12:00:00.000000",
                                         level="error", message=text))
    finally:
        ledger.close()
    with (api.home / "log" / "factorytx_core.log").open("a") as log:
        log.write(f"2026-12-06 12:00:00,000 MainThread receiver ERROR {text}\n")


def every_get(api: Api) -> list[str]:
    """Every GET of the OpenAPI document, path parameters filled with every accepted value."""
    document = api.client.get("/schema/openapi.json").json()
    values = {"protocol": registry.receivers.tags() + ["tacomania"],
              "object_id": ["data_receiver", "data_receiver_asset", "data_transmit", "transmit", "transforms",
                            "parsers"],
              "log_filename": ["factorytx_core.log", "factorytx_web.log"]}
    out = []
    for path, item in document["paths"].items():
        if "get" not in item:
            continue
        names = re.findall(r"\{(\w+)\}", path)
        for combo in itertools.product(*(values[name] for name in names)):
            filled = path
            for name, value in zip(names, combo, strict=True):
                filled = filled.replace(f"{{{name}}}", value)
            out.append(filled)
    return out


def test_no_answer_holds_a_secret(api: Api) -> None:
    config, planted = planted_config()
    assert len(planted) >= 15  # every connector with a secret, and four URLs
    answers = [api.client.post("/v1/config/validate", json=config), api.client.post("/v1/config", json=config)]
    assert answers[-1].json()["success"] is True, answers[-1].text
    echo_everything(api, config, planted)
    bad = copy.deepcopy(config)  # violations that would echo what was posted
    for transmit in bad["data_transmit"]:
        if "base_url" in transmit:
            transmit["base_url"] = transmit["base_url"].replace("https://", "ftp://")
            transmit["API_key"] = f"<Please input your API key>{transmit['API_key']}"
    answers += [api.client.post("/v1/config/validate", json=bad), api.client.post("/v1/config", json=bad)]
    assert answers[-1].json()["success"] is False
    answers += [api.client.post("/v1/restream", json={"receiver_0": [{"asset": "nope", "stream_type": p}]})
                for p in planted[:2]]
    paths = every_get(api)
    assert {"/v1/status", "/v1/streams", "/metrics", "/v1/log/stream/factorytx_core.log"} <= set(paths)
    answers += [api.client.get(path) for path in paths]
    assert all(answer.status_code < 500 or answer.request.url.path == "/v1/restream" for answer in answers)
    shown = {f"{a.request.method} {a.request.url}": a.text for a in answers}
    leaks = {where: [s for s in planted if s in text] for where, text in shown.items()}
    assert {where: found for where, found in leaks.items() if found} == {}
    # the echoes were there, masked: the status names each transmit's error, the streams their marker
    status = json.loads(shown[f"GET {api.client.base_url}/v1/status"])["response"]["last_data_transmit"]
    assert all(f"operator:{REDACTED}@" in t["last_error"] and REDACTED in t["last_error"] for t in status.values())
    streams = json.loads(shown[f"GET {api.client.base_url}/v1/streams"])["response"]
    assert all(REDACTED in m["message"] for s in streams for m in s["markers"]) and streams
