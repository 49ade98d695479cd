"""A Docker engine for the container tests, and the factoryflow image built on it.

If no engine answers (``DOCKER_HOST`` or the default socket), Debian's ``dockerd`` is
started with no bridge and no iptables rules (``--bridge=none --iptables=false
--ip-masq=false``): containers run with host networking only and bind to 127.0.0.1. Its
``--data-root`` is ``.cache/docker`` (images survive between runs of the suite), its socket
and run files are in a temporary directory, and it is stopped, by PID, when the tests end.
The image is built by ``compose/build-image.sh`` (a debootstrap base, no registry), once per
session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.services.process import ServerProcess, debian_bin, maven_jars

ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = ROOT / ".cache" / "docker"
IMAGE = "factoryflow:local"
#: The image's ``factoryflow`` user and group id (compose/Dockerfile).
USER = 10001


class DockerError(RuntimeError):
    """A ``docker`` command failed; the message has its output."""


class Docker:
    """The ``docker`` command against one engine (``host``: its ``unix://`` address).

    Every call raises :class:`DockerError` with the command's output when it fails."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.env = {**os.environ, "DOCKER_HOST": host}

    def __call__(self, *args: str, timeout: float = 600, check: bool = True,
                 stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """``docker ARGS``; its stdout and stderr as text."""
        result = subprocess.run(["docker", *args], env=self.env, capture_output=True, timeout=timeout,
                                input=None if stdin is None else stdin.decode(), text=True)
        if check and result.returncode != 0:
            raise DockerError(f"docker {' '.join(args)} exited {result.returncode}: "
                              f"{(result.stderr or result.stdout).strip()[-3000:]}")
        return result

    def answers(self) -> bool:
        return self("version", "--format", "{{.Server.Version}}", timeout=20, check=False).returncode == 0

    def inspect(self, container: str) -> dict[str, object]:
        """``docker inspect`` of one container, as JSON."""
        return dict(json.loads(self("inspect", container).stdout)[0])

    def inspect_image(self, image: str) -> dict[str, object]:
        """``docker image inspect`` of one image, as JSON."""
        return dict(json.loads(self("image", "inspect", image).stdout)[0])

    def exit_code(self, container: str, timeout: float = 120) -> int:
        """Wait for ``container`` to exit; its exit code."""
        return int(self("wait", container, timeout=timeout).stdout.strip())

    def logs(self, container: str) -> str:
        result = self("logs", container, check=False)
        return result.stdout + result.stderr

    def run(self, *args: str, name: str | None = None) -> str:
        """``docker run -d --network host`` (the only network here); the container's name."""
        name = name or f"factoryflow-test-{uuid.uuid4().hex[:8]}"
        self("run", "-d", "--network", "host", "--name", name, *args)
        return name

    def remove(self, *containers: str) -> None:
        """Remove the containers (running ones are killed first); missing ones are ignored."""
        if containers:
            self("rm", "-f", *containers, check=False)

    def remove_volumes(self, *volumes: str) -> None:
        if volumes:
            self("volume", "rm", "-f", *volumes, check=False)


@contextmanager
def docker_engine() -> Iterator[Docker]:
    """An engine that answers: the one at ``DOCKER_HOST`` or the default socket if it does,
    else ``dockerd`` started here and stopped on exit.

    :raises FileNotFoundError: Debian's docker.io is not installed (``scripts/setup.sh
        --services``).
    :raises TimeoutError: dockerd did not answer within 60 s (its log in the message).
    """
    existing = Docker(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    if shutil.which("docker") and existing.answers():
        yield existing
        return
    dockerd = debian_bin("dockerd", "docker.io")
    if shutil.which("docker") is None:
        raise FileNotFoundError("docker.io's docker is not installed; run scripts/setup.sh --services")
    run = Path(tempfile.mkdtemp(prefix="ff-dockerd-"))  # short: the socket's path has a limit
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    engine = Docker(f"unix://{run}/docker.sock")
    server = ServerProcess("dockerd", [
        dockerd, "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false",
        "--data-root", str(DATA_ROOT), "--exec-root", str(run / "exec"), "--pidfile", str(run / "dockerd.pid"),
        "-H", engine.host, "--containerd-namespace", "factoryflow-tests",
        "--containerd-plugins-namespace", "factoryflow-tests-plugins"], run / "dockerd.log")
    try:
        server.start(engine.answers, timeout=60)
        yield engine
    finally:
        containers = engine("ps", "-aq", "--filter", "name=factoryflow-test-", check=False).stdout.split()
        engine.remove(*containers)
        server.stop(timeout=30)
        _unmount_under(run)  # dockerd leaves its network namespace's bind mount behind
        shutil.rmtree(run, ignore_errors=True)


def _unmount_under(directory: Path) -> None:
    """Lazily unmount whatever is mounted below ``directory`` (deepest first)."""
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(f"{directory}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def build_image(engine: Docker, tag: str = IMAGE) -> str:
    """Build ``tag`` with ``compose/build-image.sh`` (the layers are cached in the engine);
    returns ``tag``.

    :raises subprocess.CalledProcessError: the build failed (its output in the error).
    """
    started = time.monotonic()
    result = subprocess.run(["bash", str(ROOT / "compose" / "build-image.sh"), "--tag", tag], env=engine.env,
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr[-5000:])
    print(f"\n{tag} built in {time.monotonic() - started:.0f} s: {result.stderr.strip().splitlines()[-1]}")
    return tag


def volume(engine: Docker, prefix: str = "factoryflow-test") -> str:
    """A new named volume; the caller removes it."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    engine("volume", "create", name)
    return name


def copy_into_volume(engine: Docker, name: str, files: Sequence[tuple[Path, str]], image: str = IMAGE) -> None:
    """Copy host ``files`` (path, target under the volume's root) into volume ``name``, owned
    by the image's user: a helper container copies them from a read-only bind mount."""
    staging = Path(tempfile.mkdtemp(prefix="ff-volume-"))
    try:
        for source, target in files:
            (staging / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, staging / target)
        staging.chmod(0o755)
        engine("run", "--rm", "--network", "host", "--user", "0", "-v", f"{staging}:/staging:ro",
               "-v", f"{name}:/data", image, "sh", "-c", f"cp -r /staging/. /data/ && chown -R {USER}:{USER} /data")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


KAFKA_STANDIN = "factoryflow-test/kafka:4.1.0"
_STANDIN = ROOT / "tests" / "containers" / "kafka"


def build_kafka_standin(engine: Docker) -> str:
    """Build :data:`KAFKA_STANDIN`, the compose tests' stand-in for ``apache/kafka`` (no
    registry here): Debian's Java 17 on the debootstrap base, Kafka's jars from Maven Central
    (``tests/containers/kafka/pom.xml``, cached in ``.cache/kafka-image``); returns its tag.

    :raises DockerError: the build failed.
    """
    jars = maven_jars(_STANDIN / "pom.xml", ROOT / ".cache" / "kafka-image" / "4.1.0", "kafka-tools-4.1.0.jar")
    subprocess.run(["bash", str(ROOT / "compose" / "build-image.sh"), "--base-only"], env=engine.env,
                   check=True, capture_output=True, timeout=900)
    context = Path(tempfile.mkdtemp(prefix="ff-kafka-image-"))
    try:
        for name in ("Dockerfile", "run", "kafka-broker-api-versions.sh", "log4j2.properties"):
            shutil.copy2(_STANDIN / name, context / name)
        shutil.copytree(jars, context / "libs")
        engine("build", "--network", "host", "-t", KAFKA_STANDIN, str(context), timeout=1200)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return KAFKA_STANDIN
