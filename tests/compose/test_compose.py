"""compose/, read as files: what the container tests (tests/containers/) cannot see by running
it. Every service on the host's network (or none) and bound to 127.0.0.1; a file Debian's
docker-compose 1.29 reads as well as Compose v2; the seeded config is the demo's with the
Kafka transmit; the image's Dockerfile takes its base as a build argument; the entrypoint
seeds a config only where none is saved."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from dataflows.config import load_file
from dataflows.demo import demo_config

COMPOSE = Path(__file__).resolve().parents[2] / "compose"


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def test_services_use_the_hosts_network_and_bind_to_loopback() -> None:
    doc = compose()
    assert set(doc) == {"services", "volumes"}  # no top-level `name`: docker-compose 1.29 refuses it
    assert set(doc["services"]) == {"kafka", "plant", "factoryflow"}
    for name, service in doc["services"].items():
        assert service["network_mode"] in ("host", "none"), name  # no bridge networks here
        assert "ports" not in service and "networks" not in service, name
    env = doc["services"]["kafka"]["environment"]
    for key in ("KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_QUORUM_VOTERS"):
        addresses = [a.split("//")[-1].split("@")[-1] for a in env[key].split(",")]
        assert all(a.startswith("127.0.0.1:") for a in addresses), (key, env[key])
    assert doc["services"]["factoryflow"]["build"]["network"] == "host"


def test_each_service_keeps_its_data_on_a_named_volume() -> None:
    doc = compose()
    mounts = {name: dict(reversed(v.split(":")[:2]) for v in s.get("volumes", []))
              for name, s in doc["services"].items()}
    assert mounts["kafka"]["/var/lib/kafka/data"] == "kafka-data"
    assert mounts["plant"]["/data"] == "plant-data"
    assert mounts["factoryflow"]["/data"] == "factoryflow-data"  # state, spool, recovery
    assert mounts["factoryflow"]["/plant"] == "plant-data"
    assert set(doc["volumes"]) == {"kafka-data", "plant-data", "factoryflow-data"}


def test_the_seeded_config_is_the_demos_into_kafka_and_runnable() -> None:
    service = compose()["services"]["factoryflow"]
    seed = Path(service["environment"]["FACTORYFLOW_SEED_CONFIG"])
    source = {target: source for source, target, *_ in (v.split(":") for v in service["volumes"])}
    document = json.loads((COMPOSE / source[str(seed.parent)] / seed.name).read_text())
    [transmit] = document["data_transmit"]
    assert document == demo_config(Path("/plant"), transmit)  # the demo's streams, one transmit
    assert transmit["transmit_type"] == "kafka" and transmit["bootstrap_servers"] == "${KAFKA_BOOTSTRAP_SERVERS}"
    config = load_file(COMPOSE / source[str(seed.parent)] / seed.name,
                       environ={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"})
    assert config.data_transmit[0].bootstrap_servers == "127.0.0.1:9092"


def test_dockerfile_takes_its_base_and_runs_factoryflow_as_its_user() -> None:
    lines = [ln for ln in (COMPOSE / "Dockerfile").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "ARG BASE=python:3.12-slim" and lines[1] == "FROM ${BASE}"
    root = COMPOSE.parent
    copied = [shlex.split(ln)[1] for ln in lines if ln.startswith("COPY")]
    assert all((root / path).exists() for path in copied), copied
    assert {"pyproject.toml", "dataflows", "connectors", "api"} <= {p.rstrip("/") for p in copied}
    assert "USER factoryflow" in lines and 'CMD ["run"]' in lines
    assert any(ln.startswith("HEALTHCHECK") for ln in lines)
    ignored = (root / ".dockerignore").read_text().split()
    assert {".venv", ".cache", ".git"} <= set(ignored)


def test_entrypoint_seeds_the_config_once(tmp_path: Path) -> None:
    home = tmp_path / "data"
    seed = tmp_path / "seed.json"
    seed.write_text('{"data_receiver": []}')
    env = {**os.environ, "FACTORYFLOW_HOME": str(home), "FACTORYFLOW_SEED_CONFIG": str(seed),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    assert os.access(COMPOSE / "entrypoint.sh", os.X_OK)
    subprocess.run(["sh", str(COMPOSE / "entrypoint.sh"), "true"], env=env, check=True)
    assert (home / "conf.d" / "config.json").read_text() == seed.read_text()
    (home / "conf.d" / "config.json").write_text('{"saved": "by the API"}')
    subprocess.run(["sh", str(COMPOSE / "entrypoint.sh"), "true"], env=env, check=True)
    assert (home / "conf.d" / "config.json").read_text() == '{"saved": "by the API"}'
