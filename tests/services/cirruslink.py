"""Cirrus Link's Sparkplug B client (npm ``sparkplug-client`` with ``sparkplug-payload``) as
an outside edge node for the tests: ``cirruslink/edge_node.js``, run with the machine's
Node.js. The packages are installed from the npm registry into ``.cache/cirruslink/`` once
(again when ``cirruslink/package-lock.json`` changes).
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from tests.services.mosquitto import Mosquitto
from tests.services.process import npm_package
from tests.services.tahu import TahuEdgeNode

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).with_name("cirruslink")
CACHE = ROOT / ".cache" / "cirruslink"


def cirruslink_modules() -> Path:
    """The ``node_modules`` holding sparkplug-client (installed with npm on first use).

    :raises FileNotFoundError: npm is missing (``scripts/setup.sh --services``).
    """
    return npm_package(PACKAGE, CACHE, "node_modules/sparkplug-client/index.js").parents[1]


class CirrusLinkEdgeNode(TahuEdgeNode):
    """edge_node.js run as a process, with :class:`TahuEdgeNode`'s interface (``wait``,
    ``expected``, ``rebirths``, ``close``): edge node ``group/node`` with ``device``."""

    def __init__(self, broker: Mosquitto, group: str, node: str, device: str, messages: int,
                 interval_ms: int, workdir: Path) -> None:
        self.expect = workdir / f"cirruslink-{group}-{node}.jsonl"
        self.rebirths = 0
        self.paused = threading.Event()  # (edge_node.js does not pause)
        self.published: int | None = None
        self.lines: list[str] = []
        self._done = threading.Event()
        self.process = subprocess.Popen(
            ["node", str(PACKAGE / "edge_node.js"), str(broker.port), group, node, device, str(messages),
             str(interval_ms), str(self.expect)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "NODE_PATH": str(cirruslink_modules())})
        threading.Thread(target=self._read, daemon=True).start()
