"""The configs the specs publish, read from ``../shared/specs`` (never copied into the repo).

- :func:`quickstart`: the FactoryTX quickstart config (factorytx-demo-and-rest-api.txt);
- :func:`templates`: the five templates of ``GET /v1/config/templates``
  (factorytx-rest-api.txt). The published SMB template lacks a comma after its
  ``field_names`` value (``"..." "timezone"``), which no JSON reader accepts; this
  helper restores that one comma and nothing else;
- :func:`rest_examples`: the configs of the ``GET``/``POST /v1/config`` and
  ``POST /v1/config/validate`` examples.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SPECS = Path(__file__).resolve().parents[1].parent / "shared" / "specs"


def spec_text(name: str) -> str:
    """The text of one spec file."""
    return (SPECS / name).read_text(encoding="utf-8")


def _json_after(text: str, marker: str) -> Any:
    start = text.index("{", text.index(marker))
    return json.JSONDecoder().raw_decode(text[start:])[0]


def quickstart() -> dict[str, Any]:
    """The quickstart configuration, verbatim."""
    return _json_after(spec_text("factorytx-demo-and-rest-api.txt"),
                       "replace the existing configuration with the following configuration:")


def templates() -> list[dict[str, Any]]:
    """The documented templates: ``[{name, description, configuration}]``."""
    text = spec_text("factorytx-rest-api.txt")
    start = text.index("{", text.index("GET v1/config/templates HTTP/1.1"))
    line = text[start:].split("\n", 1)[0]
    line = re.sub(r'(e\.g\. \\"datetime\\"\)>") ("timezone")', r"\1, \2", line)
    return json.loads(line)["response"]


def rest_examples() -> dict[str, dict[str, Any]]:
    """Configs from the REST examples, keyed by where they appear."""
    text = spec_text("factorytx-rest-api.txt")
    return {
        "GET /v1/config": _json_after(text, "GET /v1/config HTTP/1.1")["response"],
        "POST /v1/config": _json_after(text, "POST /v1/config HTTP/1.1 Content-Type: application/json"),
        "POST /v1/config/validate": _json_after(
            text, "POST /v1/config/validate HTTP/1.1 Content-Type: application/json"),
    }
