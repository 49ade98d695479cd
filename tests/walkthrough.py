"""The control API walkthrough: a fresh ``python -m api``, the quickstart config POSTed, the
dataflow started through the API, records flowing into Kafka, ``lasercut:mssql`` restreamed.

Used by ``tests/api/test_walkthrough.py`` and by ``scripts/api_walkthrough.py`` (which
prints every step's ``/v1/streams``, ``/v1/status`` and ``/v1/log/stream``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from dataflows.demo import Plant, demo_config
from tests.flowrun import REPO
from tests.services.kafka import KafkaBroker
from tests.services.process import free_port

LASERCUT_TOPIC = "factoryflow.lasercut.mssql"
LASERCUT_MACHINES = 6


def quickstart_config(home: Path, bootstrap: str) -> dict[str, Any]:
    """The demo's quickstart config with the ``rdpv3`` (Kafka) transmit."""
    config = demo_config(home)
    config["data_transmit"] = [{"transmit_name": "MyTransmit_1", "transmit_type": "rdpv3",
                                "bootstrap_servers": bootstrap, "topic_prefix": "factoryflow"}]
    return config


class ApiProcess:
    """``python -m api`` on a free 127.0.0.1 port, its home at ``home`` (with ``api_key``:
    ``FACTORYFLOW_API_KEY``, which ``client`` sends)."""

    def __init__(self, home: Path, api_key: str | None = None, rate_interval: float | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FACTORYFLOW_HOME": str(home), "PYTHONPATH": str(REPO)}
        env.pop("FACTORYFLOW_CONFIG", None)
        env.pop("FACTORYFLOW_API_KEY", None)
        if api_key is not None:
            env["FACTORYFLOW_API_KEY"] = api_key
        if rate_interval is not None:
            env["FACTORYFLOW_RATE_INTERVAL"] = str(rate_interval)
        self.log = open(home / "api-console.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "api", "--port", str(self.port)], env=env,
                                     cwd=home, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=120,
                                   headers={"X-API-Key": api_key} if api_key else None)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.get("/v1/status")
                return
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("python -m api did not come up:\n"
                                       + (home / "api-console.log").read_text()[-3000:]) from None
                time.sleep(0.2)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON body of a request."""
        return self.client.request(method, path, **kwargs).json()

    def stop(self) -> int:
        """SIGTERM (the API stops its dataflow gracefully first); returns the exit status."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(90)
        self.log.close()
        return code


def walkthrough(broker: KafkaBroker, home: Path, show: Callable[[str, Any], None] = lambda *_: None,
                ticks: int = 5) -> dict[str, Any]:
    """Run the walkthrough; ``show(title, body)`` receives each step's responses.

    :returns: ``before`` and ``after`` (lasercut messages before and after the restream,
        as Counters of (timestamp, machine)), ``restream`` (its response) and ``exit``
        (the API's exit status).
    """
    plant = Plant(home)
    plant.create()
    broker.create_topic(LASERCUT_TOPIC)  # so that the consumer below finds its partitions
    api = ApiProcess(home)
    try:
        def snapshot(step: str) -> None:
            show(f"{step}: GET /v1/streams", api.call("GET", "/v1/streams"))
            status = api.call("GET", "/v1/status")
            status["response"]["machine_info"] = "(cpu, memory, disk: omitted here)"
            show(f"{step}: GET /v1/status", status)
            show(f"{step}: GET /v1/log/stream?lines=6", api.call("GET", "/v1/log/stream", params={"lines": 6}))

        snapshot("fresh instance")
        saved = api.call("POST", "/v1/config", json=quickstart_config(home, broker.bootstrap))
        show("POST /v1/config (the quickstart config)", {"success": saved["success"],
                                                          "meta": saved["meta"]})
        for _ in range(ticks):
            plant.tick()
        show("POST /v1/ftx/start", api.call("POST", "/v1/ftx/start"))
        expected = ticks * LASERCUT_MACHINES
        before = broker.consume(LASERCUT_TOPIC, expected, timeout=120)
        show(f"Kafka {LASERCUT_TOPIC}", f"{len(before)} messages, e.g. {before[0].value.decode()}")
        snapshot("running")
        restream = api.call("POST", "/v1/restream",
                            json={"SQL Plugin 1": [{"asset": "lasercut", "stream_type": "mssql"}]})
        show("POST /v1/restream lasercut:mssql", restream)
        after = broker.consume(LASERCUT_TOPIC, 2 * expected, timeout=120)
        show(f"Kafka {LASERCUT_TOPIC} after the restream", f"{len(after)} messages")
        snapshot("after the restream")
        show("POST /v1/ftx/stop", api.call("POST", "/v1/ftx/stop"))
    finally:
        code = api.stop()

    def keys(messages: list[Any]) -> Counter[tuple[str, str]]:
        records = [json.loads(m.value) for m in messages]
        return Counter((r["timestamp"], r["machine"]) for r in records)

    return {"before": keys(before), "after": keys(after), "restream": restream, "exit": code}
