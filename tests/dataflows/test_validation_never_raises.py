"""Validation never raises (issue: ``{"protocol": []}`` raised ``TypeError``): over mutated
configs of every component, ``validate`` returns violations whose ``json_path`` points
into the document (or at a key it lacks), ``load`` raises only ``ConfigError``, and the
secret walkers the API runs on a POSTed config (redact, restore) return."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows import registry
from dataflows.config import ConfigError, Violation, load, validate
from dataflows.secrets import redact, restore_secrets, secret_locations
from tests.specs import quickstart, rest_examples, templates

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


def documents() -> list[Any]:
    """Every config the project knows: the FactoryTX examples and each component's example."""
    out: list[Any] = [quickstart(), *rest_examples().values(), *(t["configuration"] for t in templates())]
    sink = {"transmit_name": "sink", "transmit_type": "localfile"}
    files = registry.receivers.get("localfile").example
    for cls in registry.receivers.structs():
        out.append({"data_receiver": [cls.example], "transforms": [], "data_transmit": [sink]})
    for cls in registry.transforms.structs():
        out.append({"data_receiver": [files], "transforms": [cls.example], "data_transmit": [sink]})
    for cls in registry.transmits.structs():
        out.append({"data_receiver": [files], "transforms": [], "data_transmit": [cls.example]})
    for cls in registry.parsers.structs():
        out.append({"data_receiver": [{**files, "parsers": [cls.example], "streams": [
            {"asset": "a", "stream_type": "b"}]}], "transforms": [], "data_transmit": [sink]})
    return out


registry.load_all()
DOCUMENTS = documents()


def paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``value`` (the root included)."""
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += paths(item, (*path, index))
    return out


def mutate(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(document)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return out


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_validation_of_any_mutated_config_returns_violations(data: st.DataObject) -> None:
    document = data.draw(st.sampled_from(DOCUMENTS))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths(document)))
        document = mutate(document, path, data.draw(JSON))
    violations = validate(document)
    assert all(isinstance(v, Violation) for v in violations)
    where = set(paths(document))
    for v in violations:  # each points into the document, or names a key its parent lacks
        path = tuple(v.json_path)
        assert path in where or (path[:-1] in where and isinstance(path[-1], str)), v
    try:
        load(document, environ={})
    except ConfigError as exc:
        assert exc.violations and all(v.level == "error" for v in exc.violations)
    redact(document)
    secret_locations(document)
    restore_secrets(document, DOCUMENTS[0])


def test_the_reported_cases() -> None:
    cases = [
        {"data_receiver": [{"protocol": []}]},
        {"data_receiver": [{"protocol": {"a": 1}}]},
        {"data_transmit": [{"transmit_type": ["kafka"]}]},
        {"data_receiver": [{"protocol": "localfile", "parsers": [{"parser_type": []}]}]},
        {"transforms": [{"transform_type": 3.5}]},
    ]
    for document in cases:
        (first, *_) = validate(document)
        assert first.level == "error"
    assert validate({"data_receiver": [{"protocol": []}]})[0] == Violation(
        f"unknown protocol []; accepted: {', '.join(registry.receivers.tags())}",
        ["data_receiver", 0, "protocol"])
