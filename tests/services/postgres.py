"""A throwaway PostgreSQL server from Debian's packages, on 127.0.0.1 and a free port.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres``
user the Debian package creates. The data directory lives in a fresh temporary
directory that is removed on stop. The server runs as a :class:`ServerProcess` (its
process group killed on stop: a throwaway cluster needs no clean shutdown).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.process import ServerProcess, debian_bin, free_port


def _bin(name: str) -> str:
    return debian_bin(name, "PostgreSQL", also=["/usr/lib/postgresql/*/bin"])


@dataclass(frozen=True)
class Postgres:
    """A running server: connect as ``user`` (no password) to ``database`` on ``port``."""

    port: int
    user: str = "postgres"
    database: str = "postgres"
    host: str = "127.0.0.1"
    server: ServerProcess | None = field(default=None, compare=False, repr=False)  # to pause it

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


def _answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@contextmanager
def postgres_server(port: int | None = None) -> Iterator[Postgres]:
    """Start a server (``port`` or a free one), yield it, stop it and delete its data."""
    port = port or free_port()
    root = Path(tempfile.mkdtemp(prefix="factoryflow-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    process = ServerProcess("PostgreSQL", _as_owner([
        _bin("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(root),
        "-c", "fsync=off"]), root / "server.log")
    try:
        subprocess.run(_as_owner([_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                  "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        process.start(lambda: _answers(port), timeout=30)
        yield Postgres(port, server=process)
    finally:
        process.kill()
        shutil.rmtree(root, ignore_errors=True)
