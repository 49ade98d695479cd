"""A throwaway MariaDB server from Debian's packages, on 127.0.0.1 and a free port.

``mariadb-install-db`` makes a fresh data directory in a temporary directory (removed on
stop); as root the server runs as the ``mysql`` user the Debian package creates. It runs
with ``--skip-grant-tables`` (any user, no password: a test server bound to loopback) and
without the binary log or durable flushes, as a :class:`ServerProcess` (its process group
killed on stop: a throwaway server needs no clean shutdown).
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


@dataclass(frozen=True)
class MariaDB:
    """A running server: connect as ``user`` (no password) to ``database`` on ``port``."""

    port: int
    database: str = "factoryflow"
    user: str = "root"
    host: str = "127.0.0.1"
    server: ServerProcess | None = field(default=None, compare=False, repr=False)  # to pause it

    @property
    def url(self) -> str:
        """SQLAlchemy URL (PyMySQL)."""
        return f"mariadb+pymysql://{self.user}@{self.host}:{self.port}/{self.database}"

    def connection(self) -> dict[str, object]:
        """The ``connections`` entry of a factoryflow ``sql`` receiver for this server."""
        return {"database_type": "mariadb", "host": self.host, "port": self.port,
                "username": self.user, "database_name": self.database}


def _answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        return bool(sock.recv(1))  # the server's greeting: it accepts queries


@contextmanager
def mariadb_server(port: int | None = None) -> Iterator[MariaDB]:
    """Start a server (``port`` or a free one) with an empty database ``factoryflow``,
    yield it, stop it and delete its data."""
    port = port or free_port()
    root = Path(tempfile.mkdtemp(prefix="factoryflow-mariadb-"))
    data = root / "data"
    user = ["--user=mysql"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(root, "mysql", "mysql")
    process = ServerProcess("MariaDB", [
        debian_bin("mariadbd", "MariaDB"), "--no-defaults", *user, f"--datadir={data}",
        f"--socket={root / 'mariadb.sock'}", f"--pid-file={root / 'mariadb.pid'}", f"--port={port}",
        "--bind-address=127.0.0.1", "--skip-grant-tables", "--skip-name-resolve", "--skip-log-bin",
        "--innodb-flush-log-at-trx-commit=0", "--innodb-buffer-pool-size=64M",
        "--innodb-log-file-size=16M", "--character-set-server=utf8mb4"], root / "server.log")
    try:
        subprocess.run([debian_bin("mariadb-install-db", "MariaDB"), "--no-defaults", *user,
                        f"--datadir={data}", "--skip-test-db", "--auth-root-authentication-method=normal"],
                       check=True, capture_output=True)
        process.start(lambda: _answers(port), timeout=60)
        import pymysql

        with pymysql.connect(host="127.0.0.1", port=port, user="root") as conn, conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE factoryflow")
        yield MariaDB(port, server=process)
    finally:
        process.kill()
        shutil.rmtree(root, ignore_errors=True)
