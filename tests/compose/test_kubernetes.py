"""The Kubernetes example (compose/kubernetes/factoryflow.yaml) against the Kubernetes API
schemas (kubernetes-validate, strict: no unknown fields), and what makes it one bytewax
cluster: as many addresses as replicas, each a pod's stable name under the headless
Service, the process id from the pod's index, a volume per pod, a valid factoryflow config."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dataflows.config import validate

EXAMPLE = Path(__file__).resolve().parents[2] / "compose" / "kubernetes" / "factoryflow.yaml"
#: The oldest Kubernetes the example is for (the StatefulSet pod-index label: 1.28).
VERSION = "1.28"


def documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(EXAMPLE.read_text())}


def test_every_document_is_valid_against_the_kubernetes_schemas() -> None:
    docs = documents()
    assert set(docs) == {"ConfigMap", "Service", "StatefulSet"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, VERSION, strict=True)
    broken = copy.deepcopy(docs["StatefulSet"])
    broken["spec"]["template"]["spec"]["containers"][0]["argz"] = ["run"]  # the validator does check
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_the_statefulset_is_one_bytewax_cluster_of_its_replicas() -> None:
    docs = documents()
    service, stateful = docs["Service"], docs["StatefulSet"]["spec"]
    assert service["spec"]["clusterIP"] == "None" and stateful["serviceName"] == service["metadata"]["name"]
    assert stateful["podManagementPolicy"] == "Parallel"  # the processes start together
    [container] = stateful["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "run"
    addresses = args[args.index("--addresses") + 1].split(";")
    name, port = docs["StatefulSet"]["metadata"]["name"], service["spec"]["ports"][0]["port"]
    assert addresses == [f"{name}-{i}.{stateful['serviceName']}:{port}" for i in range(stateful["replicas"])]
    env = {e["name"]: e for e in container["env"]}
    assert env["FACTORYFLOW_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] == stateful["volumeClaimTemplates"][0]["metadata"]["name"]  # a home per pod
    assert stateful["template"]["spec"]["securityContext"]["runAsUser"] == 10001  # the image's user


def test_the_example_config_is_valid() -> None:
    config = json.loads(documents()["ConfigMap"]["data"]["config.json"])
    assert validate(config, environ={"PLANT_DB_PASSWORD": "secret"}) == []
