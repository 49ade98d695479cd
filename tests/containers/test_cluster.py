"""Two containers as one bytewax cluster (``factoryflow run --addresses --process-id``, each
with its own volume, so its own home and its own recovery partition): the streams are split
between them and both deliver; one container SIGKILLed takes the cluster down, and the
cluster started again on the same volumes delivers every record once (``exactly_once``)."""

from __future__ import annotations

import csv
import json
import re
import time
import uuid
from collections import Counter
from pathlib import Path

from tests.containers.test_image import NAB, _committed, nab_config
from tests.services.docker import Docker, copy_into_volume, volume
from tests.services.kafka import KafkaBroker
from tests.services.process import free_port

STREAMS = 4
#: NAB copies per stream.
FILES = 10


def test_two_containers_are_one_cluster_and_survive_a_sigkill(
        docker: Docker, image: str, kafka: KafkaBroker, tmp_path: Path) -> None:
    topic = f"cluster-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(nab_config(kafka.bootstrap, topic,
                                        {f"machine_{s}": f"machine_{s}_*.csv" for s in range(STREAMS)})))
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    files = [(config, "conf.d/config.json"),
             *((NAB, f"in/machine_{s}_{n:02d}.csv") for s in range(STREAMS) for n in range(FILES))]
    volumes = [volume(docker), volume(docker)]
    containers: list[str] = []

    def start(process: int, *limits: str) -> str:
        containers.append(docker.run(*limits, "-v", f"{volumes[process]}:/data", image, "run", "--addresses",
                                     addresses, "--process-id", str(process)))
        return containers[-1]

    try:
        for data in volumes:
            copy_into_volume(docker, data, files)
        total = STREAMS * FILES * (sum(1 for _ in NAB.open()) - 1)
        # a tenth of a core each (the cgroup's CPU quota): the backfill takes long enough to be cut
        first = [start(p, "--cpus", "0.1") for p in (0, 1)]
        deadline = time.monotonic() + 180
        while "new or changed files" not in docker.logs(first[1]):  # its streams are reading
            assert time.monotonic() < deadline, f"no stream read in 180 s:\n{docker.logs(first[1])[-2000:]}"
            for container in first:
                assert docker.inspect(container)["State"]["Running"], docker.logs(container)[-3000:]
            time.sleep(0.2)
        time.sleep(3)
        docker("kill", first[1])
        at_kill = _committed(kafka.bootstrap, topic)
        assert at_kill < total, f"the kill came after the end: offset {at_kill} of {total} records"
        survivor = docker.exit_code(first[0], timeout=120)  # a cluster stops when a process is lost
        assert "Traceback" not in docker.logs(first[0]), docker.logs(first[0])[-3000:]
        assert "another process stopped or cannot be reached" in docker.logs(first[0])
        print(f"\nprocess 1 SIGKILLed at offset {at_kill:,} of {total:,}; process 0 then exited {survivor}")

        second = [start(p) for p in (0, 1)]
        messages = kafka.consume(topic, total, timeout=300)
        assert len(messages) == total, f"{len(messages):,} messages (read_committed) of {total:,} records"
        with NAB.open() as rows:
            one_copy = Counter(float(row["value"]) for row in csv.DictReader(rows))
        per_stream: dict[bytes | None, Counter[float]] = {}
        for message in messages:
            per_stream.setdefault(message.key, Counter())[float(json.loads(message.value or b"{}")["value"])] += 1
        assert len(per_stream) == STREAMS
        for key, values in per_stream.items():  # each record once: each stream, its files' values FILES times
            assert values == Counter({v: n * FILES for v, n in one_copy.items()}), key
        docker("stop", "--time", "60", *second)  # SIGTERM to both at once: a cluster stops together
        delivered_by = []
        for process, container in enumerate(second):
            assert docker.exit_code(container) == 0
            assert "stopped on SIGTERM: records delivered per stream" in docker.logs(container)
            # the progress lines of its forwarder, in either life: "<stream>: +N messages, M delivered"
            logs = docker("run", "--rm", "--network", "none", "-v", f"{volumes[process]}:/data", image,
                          "cat", "/data/log/factorytx_core.log").stdout
            delivered_by.append(set(re.findall(r"(machine_\d):temperature: \+\d+ messages", logs)))
            # each home's forwarders have transactional ids of their own: none fences another's
            assert "a transaction failed" not in logs, logs[-3000:]
        print(f"streams delivered by process 0: {sorted(delivered_by[0])}, by process 1: {sorted(delivered_by[1])}")
        assert delivered_by[0] and delivered_by[1], "both processes deliver"
        assert delivered_by[0] | delivered_by[1] == {f"machine_{s}" for s in range(STREAMS)}
        assert not delivered_by[0] & delivered_by[1], "each stream belongs to one process"
    finally:
        docker.remove(*containers)
        docker.remove_volumes(*volumes)
