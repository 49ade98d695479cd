"""Samba's ``smbd`` (Debian's ``samba`` package) with a private config, on 127.0.0.1 and a
free port.

Everything it keeps (the config, the password database, locks, logs, the share) lives
in a temporary directory removed on stop. It serves one share, ``data``, to one user
(the current Unix user, who must be root for ``smbd`` to switch users) with a password,
and requires SMB 3 encryption, so the client's encryption is exercised.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services.process import ServerProcess, debian_bin, free_port

SHARE = "data"
PASSWORD = "factoryflow-test-password"


@dataclass
class SambaServer:
    """A running ``smbd``: ``port``, ``username``/``password``, and ``share`` (the directory
    behind the ``data`` share)."""

    port: int
    username: str
    share: Path
    conf: Path
    process: ServerProcess
    password: str = PASSWORD

    def connection(self, folder: str, **keys: Any) -> dict[str, Any]:
        """An ``smb`` receiver connection to ``/data/<folder>`` here."""
        return {"host": "127.0.0.1", "port": self.port, "username": self.username,
                "password": self.password, "shared_folder": f"/{SHARE}/{folder}", **keys}

    def sessions(self) -> str:
        """``smbstatus``'s table of sessions (it names each one's encryption)."""
        return subprocess.run([debian_bin("smbstatus", "Samba"), "-s", str(self.conf), "-b"], capture_output=True,
                              text=True, check=True).stdout

    def start(self) -> None:
        port = self.port

        def ready() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        self.process.start(ready, timeout=30)

    def stop(self) -> None:
        self.process.stop()


@contextmanager
def samba_server() -> Iterator[SambaServer]:
    """Start ``smbd`` on a free port, yield it, stop it and delete everything it kept."""
    root = Path(tempfile.mkdtemp(prefix="factoryflow-samba-"))
    for name in ("share", "private", "lock", "state", "cache", "pid", "log"):
        (root / name).mkdir()
    port = free_port()
    user = getpass.getuser()
    conf = root / "smb.conf"
    conf.write_text("\n".join([
        "[global]",
        "  server role = standalone server",
        "  interfaces = 127.0.0.1",
        "  bind interfaces only = yes",
        f"  smb ports = {port}",
        "  disable netbios = yes",
        *(f"  {key} directory = {root / key}" for key in ("lock", "state", "cache", "pid")),
        f"  private dir = {root / 'private'}",
        f"  log file = {root / 'log' / 'smbd.log'}",
        f"  passdb backend = tdbsam:{root / 'private' / 'passdb.tdb'}",
        "  server min protocol = SMB3",
        "  smb encrypt = required",
        "  load printers = no",
        "  printing = bsd",
        "  printcap name = /dev/null",
        "  disable spoolss = yes",
        "  invalid users =",
        f"[{SHARE}]",
        f"  path = {root / 'share'}",
        "  read only = no",
        f"  force user = {user}",
        "",
    ]))
    subprocess.run([debian_bin("smbpasswd", "Samba"), "-c", str(conf), "-s", "-a", user], check=True,
                   input=f"{PASSWORD}\n{PASSWORD}\n", text=True, capture_output=True)
    process = ServerProcess("smbd", [debian_bin("smbd", "Samba"), "-s", str(conf), "--foreground", "--no-process-group",
                                     "--debug-stdout", "-d", "1"], root / "smbd.out")
    server = SambaServer(port, user, root / "share", conf, process)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
