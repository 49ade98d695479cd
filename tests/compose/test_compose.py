"""compose/: checked statically (no Docker engine runs here): services, volumes, environment,
the dataflow's command and recovery volume, the image's Dockerfile and the mounted config."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from dataflows.config import load_file

COMPOSE = Path(__file__).resolve().parents[2] / "compose"


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """``{container path: source}`` of a service's short-syntax volumes."""
    out = {}
    for entry in service["volumes"]:
        source, target, *_ = entry.split(":")
        out[target] = source
    return out


def test_services_and_named_volumes() -> None:
    doc = compose()
    assert set(doc["services"]) == {"kafka", "dataflow", "api"}
    assert set(doc["volumes"]) == {"kafka-data", "factoryflow-data", "factoryflow-api-data"}


def test_kafka_is_a_single_node_kraft_broker() -> None:
    kafka = compose()["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == 1  # one broker: anything higher never becomes available
    assert volume_targets(kafka)[env["KAFKA_LOG_DIRS"]] == "kafka-data"
    assert all(p.startswith("127.0.0.1:") for p in kafka["ports"])
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_dataflow_runs_bytewax_with_recovery_on_a_volume() -> None:
    dataflow = compose()["services"]["dataflow"]
    command = dataflow["command"]
    assert command[:4] == ["python", "-m", "bytewax.run", "dataflows.main:flow"]
    recovery = command[command.index("-r") + 1]
    env = dataflow["environment"]
    assert env["FACTORYFLOW_RECOVERY"] == recovery
    home = env["FACTORYFLOW_HOME"]
    assert recovery.startswith(home + "/")
    assert volume_targets(dataflow)[home] == "factoryflow-data"  # state and recovery survive restarts
    assert int(command[command.index("-s") + 1]) > 0
    assert dataflow["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert dataflow["restart"] == "unless-stopped"
    for variable in ("SIGHT_MACHINE_BASE_URL", "SIGHT_MACHINE_API_KEY", "SIGHT_MACHINE_API_KEY_ID"):
        assert env[variable] == f"${{{variable}:-}}"
    build = dataflow["build"]
    assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == COMPOSE / "Dockerfile"


def test_dockerfile_builds_the_project_and_runs_the_compose_command() -> None:
    lines = [ln for ln in (COMPOSE / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert re.fullmatch(r"FROM python:3\.1[12]-slim", lines[0])
    root = COMPOSE.parent
    copied = [shlex.split(ln)[1] for ln in lines if ln.startswith("COPY")]
    assert all((root / path).exists() for path in copied), copied
    assert {"pyproject.toml", "dataflows", "connectors", "api"} <= {p.rstrip("/") for p in copied}
    cmd = next(ln for ln in lines if ln.startswith("CMD"))
    assert yaml.safe_load(cmd.removeprefix("CMD ")) == compose()["services"]["dataflow"]["command"]
    entrypoint = COMPOSE / "entrypoint.sh"
    assert os.access(entrypoint, os.X_OK) and 'mkdir -p "$FACTORYFLOW_RECOVERY"' in entrypoint.read_text()
    assert ".venv" in (root / ".dockerignore").read_text().split()


def test_mounted_config_is_runnable_and_reaches_the_compose_broker() -> None:
    dataflow = compose()["services"]["dataflow"]
    mounts = volume_targets(dataflow)
    conf = COMPOSE / mounts[f"{dataflow['environment']['FACTORYFLOW_HOME']}/conf.d"]
    config = load_file(conf / "config.json", environ={})
    [receiver] = config.data_receiver
    assert receiver.connections[0].data_directory in mounts  # the drop folder is mounted
    [kafka] = config.data_transmit
    assert kafka.bootstrap_servers == "kafka:9092"


def test_api_service_supervises_its_own_dataflow_on_its_own_volume() -> None:
    services = compose()["services"]
    api = services["api"]
    assert api["profiles"] == ["api"]  # run instead of `dataflow`, never beside it on one home
    assert api["command"][:3] == ["python", "-m", "api"]
    assert api["command"][api["command"].index("--port") + 1] == "8090"
    assert api["ports"] == ["127.0.0.1:8090:8090"]  # published to this host only
    assert api["image"] == services["dataflow"]["image"]
    homes = {name: volume_targets(s)["/data"] for name, s in services.items() if name != "kafka"}
    assert homes == {"dataflow": "factoryflow-data", "api": "factoryflow-api-data"}
    seed = api["environment"]["FACTORYFLOW_SEED_CONFIG"]
    assert volume_targets(api)[str(Path(seed).parent)] == "./conf.d"
    assert api["environment"]["FACTORYFLOW_RECOVERY"].startswith(api["environment"]["FACTORYFLOW_HOME"])
    entrypoint = (COMPOSE / "entrypoint.sh").read_text()
    assert 'cp "$FACTORYFLOW_SEED_CONFIG" "$FACTORYFLOW_HOME/conf.d/config.json"' in entrypoint
    assert '[ ! -e "$FACTORYFLOW_HOME/conf.d/config.json" ]' in entrypoint  # never over a saved config


def test_entrypoint_seeds_the_config_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    home = tmp_path / "data"
    seed = tmp_path / "seed.json"
    seed.write_text('{"data_receiver": []}')
    env = {**os.environ, "FACTORYFLOW_HOME": str(home), "FACTORYFLOW_RECOVERY": str(home / "recovery"),
           "FACTORYFLOW_SEED_CONFIG": str(seed), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(COMPOSE.parent)}
    subprocess.run(["sh", str(COMPOSE / "entrypoint.sh"), "true"], env=env, check=True)
    assert (home / "conf.d" / "config.json").read_text() == seed.read_text()
    assert (home / "recovery").is_dir()
    (home / "conf.d" / "config.json").write_text('{"saved": "by the API"}')
    subprocess.run(["sh", str(COMPOSE / "entrypoint.sh"), "true"], env=env, check=True)
    assert (home / "conf.d" / "config.json").read_text() == '{"saved": "by the API"}'
