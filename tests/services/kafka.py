"""A single-node Apache Kafka broker in KRaft mode, on 127.0.0.1 and free ports.

The broker's jars come from Maven Central: ``mvn dependency:copy-dependencies`` on
``tests/services/kafka/pom.xml`` copies them to ``.cache/kafka/<version>/`` once (the
cache survives between runs); the machine's Java runs ``kafka.Kafka``. Storage is formatted
with ``kafka.tools.StorageTool`` in a temporary directory removed on exit. A broker can be
stopped and started again on the same ports and data, for outage tests.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.services.process import ServerProcess, free_port, maven_jars

ROOT = Path(__file__).resolve().parents[2]
POM = Path(__file__).with_name("kafka") / "pom.xml"
VERSION = "4.1.0"
JARS = ROOT / ".cache" / "kafka" / VERSION

_LOG4J = """\
rootLogger.level=WARN
rootLogger.appenderRef.out.ref=OUT
appender.out.type=Console
appender.out.name=OUT
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
"""


def kafka_jars() -> Path:
    """The directory of the broker's jars, fetched with Maven on first use.

    :raises FileNotFoundError: Maven or Java is missing (``scripts/setup.sh --services``).
    :raises subprocess.CalledProcessError: Maven failed.
    """
    return maven_jars(POM, JARS, f"kafka_2.13-{VERSION}.jar")


class KafkaBroker:
    """A broker and controller in one JVM; ``bootstrap`` is its ``host:port``.

    :param root: a directory of its own for config, data and the log.
    """

    def __init__(self, root: Path, jars: Path) -> None:
        self.root = root
        self.jars = jars
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = root / "broker.log"
        (root / "log4j2.properties").write_text(_LOG4J)
        (root / "server.properties").write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={root / 'data'}",
            "num.partitions=3",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=3",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "",
        ]))
        # Kafka's form (base64url of 16 bytes), never starting with "-": the tool would read
        # such an id as an option and fail (a random id does about once in 64 runs)
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c",
                                  str(root / "server.properties")), check=True, capture_output=True)
        self._server = ServerProcess(f"Kafka broker on {self.bootstrap}",
                                     self._java("kafka.Kafka", str(root / "server.properties")), self.log_path)

    def _java(self, main: str, *args: str) -> list[str]:
        return ["java", "-Xms256m", "-Xmx768m", "-XX:+UseSerialGC", "-cp", f"{self.jars}/*",
                f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}", main, *args]

    def start(self, timeout: float = 90.0) -> None:
        """Start the JVM and wait until the broker answers metadata requests.

        :raises TimeoutError: not ready within ``timeout`` seconds (its log is in the message).
        """
        self._server.start(self._answers, timeout)

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            pass
        return bool(AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=10).brokers)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 30 s); its data stays for :meth:`start`."""
        self._server.stop(timeout=30)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash or power loss would; its data stays for :meth:`start`."""
        self._server.kill()

    def create_topic(self, name: str, partitions: int = 3) -> None:
        """Create ``name`` with ``partitions`` partitions (replication 1) and wait for it."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(30)

    def consume(self, topic: str, expected: int, timeout: float = 60.0,
                idle: float = 3.0) -> list[Message]:
        """Every message of ``topic`` from the beginning: stops once ``expected`` arrived and
        nothing more came for ``idle`` seconds, or after ``timeout``."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"test-{uuid.uuid4()}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        try:
            while time.monotonic() < deadline:
                batch = consumer.consume(10_000, timeout=0.5)
                for message in batch:
                    if message.error():
                        raise KafkaException(message.error())
                    out.append(Message(message.partition(), message.offset(), message.key(),
                                       message.value(), dict(message.headers() or [])))
                if batch:
                    last = time.monotonic()
                elif len(out) >= expected and time.monotonic() - last >= idle:
                    break
        finally:
            consumer.close()
        return out


class Message(NamedTuple):
    """A consumed message."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


@contextmanager
def kafka_broker() -> Iterator[KafkaBroker]:
    """Start a broker on free ports, yield it, stop it and delete its data."""
    root = Path(tempfile.mkdtemp(prefix="factoryflow-kafka-"))
    broker = KafkaBroker(root, kafka_jars())
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
