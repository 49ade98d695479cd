"""The control API walkthrough, printed step by step (the issue's closing-note evidence).

    .venv/bin/python scripts/api_walkthrough.py

Starts a Kafka broker (KRaft, the tests' jars) and a fresh ``python -m api``, POSTs the
quickstart config (the demo's plant: SQLite for MS SQL Server, a CSV directory for Azure
Data Lake, the ``rdpv3`` Kafka transmit), starts the dataflow through the API, reads the
``lasercut:mssql`` topic, restreams that stream and reads the topic again, printing
``/v1/streams``, ``/v1/status`` and ``/v1/log/stream`` at each step.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.services.kafka import kafka_broker  # noqa: E402
from tests.walkthrough import walkthrough  # noqa: E402


def show(title: str, body: Any) -> None:
    print(f"\n### {title}")
    print(body if isinstance(body, str) else json.dumps(body, indent=1)[:4000], flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="factoryflow-walkthrough-") as tmp, kafka_broker() as broker:
        result = walkthrough(broker, Path(tmp) / "home", show)
    before, after = result["before"], result["after"]
    print(f"\nlasercut:mssql: {sum(before.values())} messages before the restream, {sum(after.values())} "
          f"after; every record delivered {sorted(set(after.values()))} times; API exit {result['exit']}")
    return 0 if set(after.values()) == {2} and result["exit"] in (0, -15) else 1


if __name__ == "__main__":
    raise SystemExit(main())
