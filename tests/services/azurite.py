"""Azurite (the Azure Storage emulator, from npm), blob service on 127.0.0.1 and a free port.

``npm ci`` installs the version pinned in ``tests/services/azurite/`` into
``.cache/azurite/`` once; the machine's Node.js runs it, always with
``--disableTelemetry --skipApiVersionCheck --loose``. :func:`azurite` serves plain HTTP
for connection strings; with a certificate it serves HTTPS with ``--oauth basic``, taking
Azure AD bearer tokens (issuer, audience and lifetime checked; the signature is not),
as the token simulator (:mod:`tests.simulators.azure_token`) issues them.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services.process import ServerProcess, free_port, npm_package
from tests.services.tls import TestCertificate

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).with_name("azurite")
CACHE = ROOT / ".cache" / "azurite"
#: Azurite's well-known development account and key (public, in Azure's documentation).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_bin() -> Path:
    """``azurite-blob``, installed with npm on first use (again when the pin changes).

    :raises FileNotFoundError: npm is missing.
    """
    return npm_package(PACKAGE, CACHE, "node_modules/.bin/azurite-blob")


@dataclass
class Azurite:
    """A running blob service of storage account ``account``: ``blob_endpoint``
    (``http(s)://127.0.0.1:<port>/<account>``)."""

    port: int
    https: bool
    process: ServerProcess
    account: str = ACCOUNT

    @property
    def blob_endpoint(self) -> str:
        return f"{'https' if self.https else 'http'}://127.0.0.1:{self.port}/{self.account}"

    @property
    def account_host(self) -> str:
        """The ``account_host`` of an ``azure_data_lake`` connection here."""
        return f"127.0.0.1:{self.port}/{self.account}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol={'https' if self.https else 'http'};AccountName={self.account};"
                f"AccountKey={ACCOUNT_KEY};BlobEndpoint={self.blob_endpoint};")

    def filesystem(self) -> Any:
        """An adlfs file system with the account key (for tests to put and change files)."""
        import adlfs

        return adlfs.AzureBlobFileSystem(connection_string=self.connection_string, skip_instance_cache=True)


@contextmanager
def azurite(certificate: TestCertificate | None = None, account: str = ACCOUNT) -> Iterator[Azurite]:
    """Start Azurite's blob service (HTTPS and OAuth with ``certificate``) for the storage
    account ``account`` (with the development account's key), yield it, stop it and delete
    its data."""
    root = Path(tempfile.mkdtemp(prefix="factoryflow-azurite-"))
    port = free_port()
    command = [str(azurite_bin()), "--blobHost", "127.0.0.1", "--blobPort", str(port),
               "--location", str(root / "data"), "--disableTelemetry", "--skipApiVersionCheck",
               "--loose", "--silent"]
    if certificate is not None:
        command += ["--cert", str(certificate.cert), "--key", str(certificate.key), "--oauth", "basic"]
    env = {**os.environ, "AZURITE_ACCOUNTS": f"{account}:{ACCOUNT_KEY}"} if account != ACCOUNT else None
    process = ServerProcess("Azurite", command, root / "azurite.log", env=env)

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    try:
        process.start(ready, timeout=60)
        yield Azurite(port, certificate is not None, process, account)
    finally:
        process.stop()
        shutil.rmtree(root, ignore_errors=True)
