"""The compose stack (compose/docker-compose.yml) brought up by a real Compose (Debian's
docker-compose 1.29), with the registry's Kafka image replaced by a stand-in built here
(tests/containers/compose.test.yml): the demo plant's rows arrive in their topics;
``down`` keeps the volumes, and ``up`` again resumes with nothing delivered twice."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.services.docker import Docker, build_kafka_standin
from tests.services.process import free_port

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "compose" / "docker-compose.yml"
OVERRIDE = Path(__file__).with_name("compose.test.yml")
#: The demo plant's streams and their topics (topic_prefix ``factoryflow``).
TOPICS = [f"factoryflow.{s}" for s in ("lasercut.mssql", "diecast.mssql", "fusion.mssql", "spraypaint.azure_lake")]


class Stack:
    """``docker-compose`` of the stack under its own project name and free loopback ports."""

    def __init__(self, docker: Docker) -> None:
        self.project = f"factoryflow-test-{uuid.uuid4().hex[:6]}"
        self.kafka_port, self.api_port = free_port(), free_port()
        self.env = {**docker.env, "FACTORYFLOW_KAFKA_PORT": str(self.kafka_port),
                    "FACTORYFLOW_KAFKA_CONTROLLER_PORT": str(free_port()),
                    "FACTORYFLOW_API_PORT": str(self.api_port)}
        self.bootstrap = f"127.0.0.1:{self.kafka_port}"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``docker-compose ARGS`` on the stack and its test override, under its project."""
        return subprocess.run(["docker-compose", "-f", str(STACK), "-f", str(OVERRIDE), "-p", self.project, *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def __call__(self, *args: str, timeout: float = 300) -> str:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, f"docker-compose {' '.join(args)}: {result.stderr[-3000:]}"
        return result.stdout

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "60").stdout


@pytest.fixture
def stack(docker: Docker, image: str) -> Iterator[Stack]:
    build_kafka_standin(docker)
    stack = Stack(docker)
    try:
        yield stack
    finally:
        stack.run("down", "-v", "--timeout", "30")


def _readings(bootstrap: str) -> Counter[tuple[str, str, str]]:
    """Every message of the plant's topics (read from the start), as (topic, machine or
    booth, timestamp): a reading's identity."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    out: Counter[tuple[str, str, str]] = Counter()
    try:
        topics = consumer.list_topics(timeout=10).topics
        ends = {}
        for topic in TOPICS:
            if topic in topics:
                for p in topics[topic].partitions:
                    ends[(topic, p)] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        consumer.assign([TopicPartition(t, p, 0) for (t, p), end in ends.items() if end > 0])
        left = {key for key, end in ends.items() if end > 0}
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error():
                    continue
                record = json.loads(message.value())
                out[(message.topic(), record.get("machine") or record.get("booth"), record["timestamp"])] += 1
                if message.offset() + 1 >= ends[(message.topic(), message.partition())]:
                    left.discard((message.topic(), message.partition()))
    finally:
        consumer.close()
    return out


def _wait_for_every_topic(stack: Stack, more_than: Counter[str] | None = None, timeout: float = 240) -> Counter:
    """Wait until each of the plant's topics holds messages (more than ``more_than`` of it)."""
    deadline = time.monotonic() + timeout
    while True:
        readings = _readings(stack.bootstrap)
        per_topic = Counter(topic for topic, _, _ in readings.elements())
        if all(per_topic[t] > (more_than or Counter())[t] for t in TOPICS):
            return readings
        assert time.monotonic() < deadline, f"topics {dict(per_topic)} after {timeout} s:\n{stack.logs()}"
        time.sleep(2)


def test_the_stack_delivers_the_plant_and_resumes_after_down_and_up(stack: Stack, docker: Docker) -> None:
    started = time.monotonic()
    stack("up", "-d")
    first = _wait_for_every_topic(stack)
    status = httpx.get(f"http://127.0.0.1:{stack.api_port}/v1/status", timeout=10).json()
    print(f"\nfirst readings in every topic {time.monotonic() - started:.0f} s after up; "
          f"dataflow {status['response']['factorytx']['status']}")
    container = f"{stack.project}_factoryflow_1"
    deadline = time.monotonic() + 120
    while (health := docker.inspect(container)["State"].get("Health", {}).get("Status")) != "healthy":
        assert time.monotonic() < deadline and health != "unhealthy", f"health {health}:\n{stack.logs()}"
        time.sleep(2)
    stack("stop", "--timeout", "60", "factoryflow")  # SIGTERM: the API stops its dataflow, then itself
    assert docker.inspect(container)["State"]["ExitCode"] == 0
    summary = [line for line in docker.logs(container).splitlines() if "records delivered per stream" in line]
    assert summary and "lasercut:mssql" in summary[-1], docker.logs(container)[-3000:]
    before_down = _readings(stack.bootstrap)
    stack("down", "--timeout", "60")
    volumes = set(docker("volume", "ls", "--format", "{{.Name}}").stdout.split())
    assert {f"{stack.project}_{v}" for v in ("kafka-data", "plant-data", "factoryflow-data")} <= volumes
    assert not docker("ps", "-q", "--filter", f"name={stack.project}_").stdout.strip()

    stack("up", "-d")
    per_topic = Counter(topic for topic, _, _ in before_down.elements())
    second = _wait_for_every_topic(stack, more_than=per_topic)  # new readings in every topic
    twice = {reading: n for reading, n in second.items() if n > 1}
    assert not twice, f"{len(twice)} readings delivered more than once, e.g. {list(twice.items())[:3]}"
    assert set(first) <= set(before_down) <= set(second)  # the broker's volume kept what was delivered
    state = httpx.get(f"http://127.0.0.1:{stack.api_port}/v1/status", timeout=10).json()["response"]["factorytx"]
    assert state["status"] == "running" and state["process"]["crash_restarts"] == 0
    print(f"readings: {sum(first.values())} at first, {sum(before_down.values())} before down, "
          f"{sum(second.values())} after up again")
