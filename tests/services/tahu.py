"""Eclipse Tahu's Java Sparkplug B implementation as an outside edge node for the tests.

``tahu/EdgeNode.java`` (tahu-core's payload model and encoder, Eclipse Paho's Java client)
publishes births naming a metric of every Sparkplug datatype, data by alias with negative
and extreme values, and answers Rebirth NCMDs. Its jars come from Maven Central
(``mvn dependency:copy-dependencies`` on ``tahu/pom.xml``, into ``.cache/tahu/``) once; the
program is compiled with the machine's ``javac`` once per version of its source.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.services.mosquitto import Mosquitto
from tests.services.process import maven_jars

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).with_name("tahu")
VERSION = "1.0.11"
JARS = ROOT / ".cache" / "tahu" / VERSION


def tahu_classpath() -> str:
    """The classpath of EdgeNode: Tahu's and Paho's jars (fetched with Maven on first use)
    and the compiled program.

    :raises FileNotFoundError: Maven or Java is missing (``scripts/setup.sh --services``).
    :raises subprocess.CalledProcessError: Maven or javac failed.
    """
    jars = maven_jars(HERE / "pom.xml", JARS, f"tahu-core-{VERSION}.jar")
    source = HERE / "EdgeNode.java"
    classes = JARS.parent / f"classes-{hashlib.sha256(source.read_bytes()).hexdigest()[:12]}"
    if not (classes / "EdgeNode.class").exists():
        staging = classes.with_name(f"{classes.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run(["javac", "-nowarn", "-cp", f"{jars}/*", "-d", str(staging), str(source)], check=True)
        staging.rename(classes)
    return f"{classes}:{jars}/*"


class TahuEdgeNode:
    """EdgeNode.java run as a process: edge node ``group/node`` with ``device``, publishing
    ``messages`` DDATA every ``interval_ms`` on ``broker``; what it published is in
    :meth:`expected`. Stopped by :meth:`close` (by PID)."""

    #: EdgeNode.java's first timestamp (ms): message ``i`` is at ``T0 + i`` seconds.
    T0 = 1767225600000

    def __init__(self, broker: Mosquitto, group: str, node: str, device: str, messages: int,
                 interval_ms: int, workdir: Path, bd_seq: int = 0) -> None:
        self.expect = workdir / f"tahu-{group}-{node}.jsonl"
        self.rebirths = 0
        self.published: int | None = None
        self.lines: list[str] = []
        self._done = threading.Event()
        self.process = subprocess.Popen(
            ["java", "-cp", tahu_classpath(), "EdgeNode", str(broker.port), group, node, device, str(messages),
             str(interval_ms), str(self.expect), str(bd_seq)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if line.startswith("rebirth"):
                self.rebirths += 1
            elif line.startswith("done "):
                self.published = int(line.split()[1])
        self._done.set()

    def wait(self, timeout: float = 120.0) -> int:
        """Wait until the node published everything and exited; how many messages it published.

        :raises TimeoutError: it did not finish within ``timeout`` s.
        :raises RuntimeError: it failed (its output says why).
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"Tahu's edge node did not finish within {timeout} s: {self.lines[-5:]}")
        self.process.wait(10)
        if self.published is None:
            raise RuntimeError("Tahu's edge node failed:\n" + "\n".join(self.lines))
        return self.published

    def expected(self) -> list[dict[str, Any]]:
        """One entry per record-bearing message published so far: ``type``, ``device``,
        ``timestamp`` (ms) and ``values`` (bytes as hex, DateTime as ms, DataSets and
        Templates as objects)."""
        if not self.expect.exists():
            return []
        return [json.loads(line) for line in self.expect.read_text().splitlines() if line.endswith("}")]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
