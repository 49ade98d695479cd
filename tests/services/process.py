"""What every test service shares: a free loopback port, a Debian program's path, a
server process the tests start and stop (its log in a file, ready when a check passes),
and the jars and npm packages some servers are fetched as."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def debian_bin(name: str, package: str, also: Sequence[str] = ()) -> str:
    """The path of ``name``, a program of Debian's ``package`` (``/usr/sbin`` is often off
    the ``PATH``); ``also``: more places to look, as globs (the newest match wins), e.g.
    PostgreSQL's versioned ``/usr/lib/postgresql/*/bin``.

    :raises FileNotFoundError: it is not installed.
    """
    for pattern in also:
        found = sorted(glob.glob(f"{pattern}/{name}"))
        if found:
            return found[-1]
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError(f"{package}'s {name} is not installed; run scripts/setup.sh --services")


class ServerProcess:
    """One server started from ``command`` (a new session, so its children stop with it).

    :param name: what the errors call it.
    :param log_path: where its output goes (appended across restarts).
    """

    def __init__(self, name: str, command: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.env = env
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        """Start it and poll ``ready`` (exceptions count as not ready) until it says so.

        :raises TimeoutError: it exited or was not ready within ``timeout`` seconds; the end
            of its log is in the message.
        """
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            with contextlib.suppress(Exception):  # not up yet
                if ready():
                    return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _signal_all(self, sig: int) -> None:
        """``sig`` to the server and every process below it (PostgreSQL's backends leave its
        process group with setsid, so a group signal misses them)."""
        assert self._process is not None
        root = psutil.Process(self._process.pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)

    def pause(self) -> None:
        """SIGSTOP the server and its children: it holds its connections open and answers
        nothing (the kernel still accepts and acknowledges), as a hung server does."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the server and its children, after :meth:`pause`."""
        self._signal_all(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL its process group: it saves nothing on the way out."""
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM its process group, SIGKILL after ``timeout`` seconds."""
        if self._process is None:
            return
        if self._process.poll() is None:
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
            except ProcessLookupError:
                pass
        self._process = None


def maven_jars(pom: Path, jars: Path, main_jar: str) -> Path:
    """``jars``, the runtime jars of ``pom``'s dependencies, copied there from Maven Central
    by ``mvn dependency:copy-dependencies`` unless ``main_jar`` is there already.

    :raises FileNotFoundError: Maven or Java is missing (``scripts/setup.sh --services``).
    :raises subprocess.CalledProcessError: Maven failed.
    """
    if (jars / main_jar).exists():
        return jars
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"{tool} is not installed; run scripts/setup.sh --services")
    staging = jars.with_name(f"{jars.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run(["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                    f"-DoutputDirectory={staging}", "-DincludeScope=runtime"], check=True)
    staging.rename(jars)
    return jars


def npm_package(package: Path, cache: Path, entry: str) -> Path:
    """``cache / entry``, a file of the npm packages pinned in ``package`` (its
    ``package.json`` and ``package-lock.json``), installed into ``cache`` with ``npm ci``
    on first use and again when the lock changes.

    :raises FileNotFoundError: npm is missing (``scripts/setup.sh --services``).
    :raises subprocess.CalledProcessError: npm failed.
    """
    path = cache / entry
    lock = package / "package-lock.json"
    if path.exists() and (cache / "package-lock.json").read_bytes() == lock.read_bytes():
        return path
    if shutil.which("npm") is None:
        raise FileNotFoundError("npm is not installed; run scripts/setup.sh --services")
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(package / name, cache / name)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=cache, check=True)
    return path
