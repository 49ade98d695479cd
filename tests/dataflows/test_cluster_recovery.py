"""A bytewax cluster whose processes each have their own home (``factoryflow run --addresses
--process-id``): process i holds recovery partition i of as many as there are processes; a
directory of a cluster of another size is refused in one line; each home's Kafka forwarders
carry the process in their transactional id. The cluster itself runs in containers
(tests/containers/test_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.transmits.kafka import KafkaTransmit, _TransactionalKafkaWriter
from dataflows.context import CLUSTER_PROCESS_ENV, RunContext
from dataflows.home import init_recovery, recovery_generation, recovery_partitions
from dataflows.recovery import refusal
from tests.flowrun import REPO


def test_each_process_holds_its_own_partition_of_the_clusters_count(tmp_path: Path) -> None:
    own = tmp_path / "process1" / "recovery"
    init_recovery(own, 1, 2)
    assert recovery_partitions(own) == {1: 2}  # partition 1 of 2: process 0 holds the other
    assert sorted(p.name for p in own.glob("part-*.sqlite3")) == ["part-1.sqlite3"]
    assert not list(own.glob(".init-*"))  # the other partitions were made aside, then removed
    generation = recovery_generation(own)
    init_recovery(own, 1, 2)  # ready already: kept as it is
    assert recovery_generation(own) == generation and recovery_partitions(own) == {1: 2}
    one_home = tmp_path / "one_home" / "recovery"  # processes of one home each add their own
    init_recovery(one_home, 1, 2)
    init_recovery(one_home, 0, 2)
    assert recovery_partitions(one_home) == {0: 2, 1: 2}
    with pytest.raises(ValueError, match="partition 2 of 2"):
        init_recovery(tmp_path / "bad", 2, 2)


def test_a_directory_of_a_cluster_of_another_size_is_refused_in_one_line(tmp_path: Path) -> None:
    directory = init_recovery(tmp_path / "recovery")  # one process: partition 0 of 1
    assert refusal(tmp_path, directory) is None
    line = refusal(tmp_path, directory, partition=1, partitions=2)
    assert line is not None and "\n" not in line
    assert "holds partition 0 of a cluster of 1 processes, but this is process 1 of 2" in line
    assert "--fresh-state" in line and str(directory) in line


def test_run_refuses_a_process_id_outside_the_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "FACTORYFLOW_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    for args in (["--process-id", "2", "--addresses", "127.0.0.1:1;127.0.0.1:2"], ["--process-id", "1"]):
        done = subprocess.run([sys.executable, "-m", "dataflows", "run", *args], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2
        assert "is not one of the cluster's" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "dataflows", "run"], capture_output=True, text=True, timeout=60,
                          env={**env, "FACTORYFLOW_PROCESS_ID": "web-1"})
    assert done.returncode == 2 and "process id 'web-1' is not one of the cluster's 1 processes" in done.stderr


def test_kafka_transactional_ids_carry_the_cluster_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = KafkaTransmit(transmit_name="kafka", bootstrap_servers="127.0.0.1:9",
                           topic="t", delivery_guarantee="exactly_once")

    def transactional_id(ctx: RunContext) -> str:
        writer = _TransactionalKafkaWriter(config, ctx, None)  # type: ignore[arg-type]
        return str(writer._settings()["transactional.id"])

    monkeypatch.delenv(CLUSTER_PROCESS_ENV, raising=False)
    assert transactional_id(RunContext(home=tmp_path, shard=1)) == "factoryflow.kafka.1"  # one home: as before
    monkeypatch.setenv(CLUSTER_PROCESS_ENV, "3")  # what factoryflow run --addresses sets for its forwarders
    ctx = RunContext(home=tmp_path, shard=1)
    assert ctx.cluster_process == 3
    assert transactional_id(ctx) == "factoryflow.kafka.3.1"
