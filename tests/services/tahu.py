"""Eclipse Tahu's Java Sparkplug B implementation as an outside edge node for the tests.

``tahu/EdgeNode.java`` (tahu-core's payload model and encoder, Eclipse Paho's Java client)
publishes births naming a metric of every Sparkplug datatype, data by alias with negative
and extreme values, and answers Rebirth NCMDs; ``tahu/Host.java`` decodes what an edge node
publishes with tahu-core's decoder and asks for rebirths, as an outside host; ``tahu/Schema.java``
writes the ``sparkplug_b.proto`` compiled into tahu-core (:func:`tahu_descriptor`). Their jars come from Maven Central
(``mvn dependency:copy-dependencies`` on ``tahu/pom.xml``, into ``.cache/tahu/``) once; the
programs are compiled with the machine's ``javac`` once per version of their sources.
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
LOGBACK = f"-Dlogback.configurationFile={HERE / 'logback.xml'}"  # Tahu's TRACE lines would fill the pipe


def tahu_classpath() -> str:
    """The classpath of EdgeNode and Host: Tahu's and Paho's jars (fetched with Maven on
    first use) and the compiled programs.

    :raises FileNotFoundError: Maven or Java is missing (``scripts/setup.sh --services``).
    :raises subprocess.CalledProcessError: Maven or javac failed.
    """
    jars = maven_jars(HERE / "pom.xml", JARS, f"tahu-core-{VERSION}.jar")
    sources = sorted(HERE.glob("*.java"))
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in sources)).hexdigest()[:12]
    classes = JARS.parent / f"classes-{digest}"
    if not (classes / "Host.class").exists():
        staging = classes.with_name(f"{classes.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run(["javac", "-nowarn", "-cp", f"{jars}/*", "-d", str(staging), *map(str, sources)], check=True)
        staging.rename(classes)
    return f"{classes}:{jars}/*"


def tahu_descriptor() -> bytes:
    """tahu-core's ``sparkplug_b.proto`` as a serialized protobuf ``FileDescriptorProto``.

    :raises subprocess.CalledProcessError: Java failed.
    """
    return subprocess.run(["java", LOGBACK, "-cp", tahu_classpath(), "Schema"], check=True,
                          capture_output=True, timeout=120).stdout


class TahuEdgeNode:
    """EdgeNode.java run as a process: edge node ``group/node`` with ``device``, publishing
    ``messages`` DDATA every ``interval_ms`` on ``broker``; what it published is in
    :meth:`expected`. Stopped by :meth:`close` (by PID)."""

    #: EdgeNode.java's first timestamp (ms): message ``i`` is at ``T0 + i`` seconds.
    T0 = 1767225600000

    def __init__(self, broker: Mosquitto, group: str, node: str, device: str, messages: int,
                 interval_ms: int, workdir: Path, bd_seq: int = 0, pause_at: int = -1) -> None:
        self.expect = workdir / f"tahu-{group}-{node}.jsonl"
        self.paused = threading.Event()
        self.rebirths = 0
        self.published: int | None = None
        self.lines: list[str] = []
        self._done = threading.Event()
        self.process = subprocess.Popen(
            ["java", LOGBACK, "-cp", tahu_classpath(), "EdgeNode", str(broker.port), group, node, device, str(messages),
             str(interval_ms), str(self.expect), str(bd_seq), str(pause_at)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if line.startswith("rebirth"):
                self.rebirths += 1
            elif line.startswith("paused"):
                self.paused.set()
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

    def resume(self) -> None:
        """Let a node paused at ``pause_at`` go on."""
        self.expect.with_name(self.expect.name + ".go").touch()

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


class TahuHost:
    """Host.java run as a process: decodes every message of Sparkplug group ``group`` on
    ``broker`` with Tahu's decoder (:meth:`messages`); :meth:`rebirth` publishes a Rebirth
    NCMD. Stopped by :meth:`close` (by PID)."""

    def __init__(self, broker: Mosquitto, group: str, workdir: Path) -> None:
        self.out = workdir / f"tahu-host-{group}.jsonl"
        self.process = subprocess.Popen(["java", LOGBACK, "-cp", tahu_classpath(), "Host", str(broker.port), group,
                                         str(self.out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        assert self.process.stdout is not None
        seen = []
        while (line := self.process.stdout.readline()) and line.strip() != "subscribed":
            seen.append(line)
        if not line:
            self.close()
            raise RuntimeError("Tahu's host did not start: " + "".join(seen))

    def messages(self) -> list[dict[str, Any]]:
        """One entry per message so far: ``topic``, ``seq``, ``timestamp``, ``metrics`` (each
        ``name``, ``alias``, ``datatype``, ``value`` as text, ``timestamp``, ``is_null``), or
        ``error`` when Tahu could not decode it."""
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.endswith("}")]

    def rebirth(self, edge_node: str) -> None:
        """Publish a Rebirth NCMD to ``edge_node`` of the group."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"rebirth {edge_node}\n")
        self.process.stdin.flush()
        seen = []
        while (line := self.process.stdout.readline()) and line.strip() != "asked":  # past Tahu's own log lines
            seen.append(line)
        if not line:
            raise RuntimeError("Tahu's host ended: " + "".join(seen))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
