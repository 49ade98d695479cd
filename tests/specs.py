"""The configs and answers the FactoryTX documents publish, as the project's own JSON fixtures
(``tests/fixtures/factorytx/``), written from ``shared/specs`` once so the suite needs
nothing beside the repository:

- :func:`quickstart`: the quickstart configuration (factorytx-demo-and-rest-api.txt);
- :func:`templates`: the five templates of ``GET /v1/config/templates``
  (factorytx-rest-api.txt). The published SMB template lacks a comma after its
  ``field_names`` value, which no JSON reader accepts; the fixture restores that one
  comma and nothing else;
- :func:`rest_examples`: the configs of the ``GET``/``POST /v1/config`` and
  ``POST /v1/config/validate`` examples;
- :func:`opcua_template_response`: the whole answer of ``GET /v1/config/templates/opcua``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "factorytx"


def fixture(name: str) -> Any:
    """The decoded JSON fixture ``name``."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def quickstart() -> dict[str, Any]:
    """The quickstart configuration, verbatim."""
    return fixture("quickstart_config.json")


def templates() -> list[dict[str, Any]]:
    """The documented templates: ``[{name, description, configuration}]``."""
    return fixture("config_templates.json")


def rest_examples() -> dict[str, dict[str, Any]]:
    """Configs from the REST examples, keyed by where they appear."""
    return {
        "GET /v1/config": fixture("get_config_response.json"),
        "POST /v1/config": fixture("post_config_request.json"),
        "POST /v1/config/validate": fixture("post_validate_request.json"),
    }


def opcua_template_response() -> dict[str, Any]:
    """The documented answer of ``GET /v1/config/templates/opcua``."""
    return fixture("get_template_opcua_response.json")
