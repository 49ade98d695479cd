"""A throwaway PostgreSQL server from Debian's packages, on 127.0.0.1 and a free port.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres``
user the Debian package creates. The data directory lives in a fresh temporary
directory that is removed on stop.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"PostgreSQL's {name} is not installed; run scripts/setup.sh --services")
    return found[-1]


@dataclass(frozen=True)
class Postgres:
    """A running server: connect as ``user`` (no password) to ``database`` on ``port``."""

    port: int
    user: str = "postgres"
    database: str = "postgres"
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.database}"

    def connection(self) -> dict[str, object]:
        """The ``connections`` entry of a factoryflow ``sql`` receiver for this server."""
        return {"database_type": "postgresql", "host": self.host, "port": self.port,
                "username": self.user, "database_name": self.database}


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server(port: int | None = None) -> Iterator[Postgres]:
    """Start a server (``port`` or a free one), yield it, stop it and delete its data."""
    port = port or free_port()
    root = Path(tempfile.mkdtemp(prefix="factoryflow-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    try:
        subprocess.run(_as_owner([_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                  "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                                  "-o", f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off", "start"]),
                       check=True, capture_output=True)
        server = Postgres(port)
        _wait(server)
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _wait(server: Postgres, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((server.host, server.port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
