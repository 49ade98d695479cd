"""Fixtures for the control API: an installation served in-process, its dataflow a real child."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.supervisor import Supervisor
from dataflows.main import LOG_FORMAT
from dataflows.secrets import RedactingFilter


@dataclass
class Api:
    """An API under test: its client, home and supervisor."""

    client: TestClient[Any]
    home: Path
    supervisor: Supervisor

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the endpoint and return ``response`` of a 200 ``success: true`` answer."""
        answer = self.client.request(method, path, **kwargs)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["success"] is True, body
        return body["response"]


def make_api(home: Path, **options: Any) -> Iterator[Api]:
    """Serve the API of ``home`` in-process, logging to its ``factorytx_web.log`` as
    ``python -m api`` does; leaving stops the dataflow it started."""
    (home / "log").mkdir(parents=True, exist_ok=True)
    redacting = RedactingFilter()
    handler = logging.FileHandler(home / "log" / "factorytx_web.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(redacting)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    supervisor = Supervisor(home, stop_timeout=30, snapshot_interval=1, max_backoff=2)
    app = create_app(home, supervisor=supervisor, redacting=redacting, **options)
    try:
        with TestClient(app) as client:
            yield Api(client, home, supervisor)
    finally:
        supervisor.close()
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """A fresh installation's control API (dataflow stopped)."""
    yield from make_api(tmp_path / "home", restream_timeout=60)
