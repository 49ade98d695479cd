"""The ``smb`` receiver: files on a Windows (SMB 2/3) share, through smbprotocol's fsspec
file system.

Connection keys (``shared/specs/factorytx-digest.md``, Receivers): ``host``, ``port``
(445 by default), ``username``, ``password``, ``domain`` (sent as ``DOMAIN\\username``),
``shared_folder`` (the share, then the folder in it: ``/share/folder``) and
``connection_name``. Messages are encrypted (SMB 3) whenever the server asks for it.
Everything else (filters, parsers, incremental reading, ``delete_completed``) is the file
core's: :mod:`connectors.receivers._files`. A file's identity is its path, size and
modification time.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from connectors.receivers._files import (
    Connection,
    FileReceiver,
    Location,
    file_example,
    file_template,
)
from dataflows.sdk import (
    JsonPath,
    Port,
    Template,
    Violation,
    describe,
    error,
    receivers,
)

#: Seconds to wait for the server when connecting; the stream's backoff retries after that.
CONNECT_TIMEOUT = 15


class SmbConnection(Connection, kw_only=True, frozen=True):
    """A folder on a Windows (SMB) share."""

    host: Annotated[str, describe("Hostname or IP address of the server.", min_length=1)]
    username: Annotated[str | None, describe("User to log in as.")] = None
    password: Annotated[str | None, describe("Password of the user.", secret=True)] = None
    shared_folder: Annotated[str, describe("Share, then the folder in it: '/data/folder-with-files'.")]
    port: Annotated[Port | None, describe("TCP port; 445 when absent.")] = None
    domain: Annotated[str | None, describe("Windows domain of the user.")] = None

    def user(self) -> str | None:
        """The user name as the server takes it: ``DOMAIN\\username`` with a domain."""
        if self.username is None or not self.domain:
            return self.username
        return f"{self.domain}\\{self.username}"


@receivers.register
class SmbReceiver(FileReceiver, tag="smb", kw_only=True):
    """Reads files from Windows (SMB) shares."""

    title: ClassVar[str] = "SMB"
    template: ClassVar[Template] = file_template(
        "smb", "SMB", "A template for collecting data from files on a Microsoft Windows Network", {
            "host": "<Please input the hostname or IP address (e.g. 127.0.0.1)>",
            "username": "<Please input the username for login>",
            "password": "<Please input the password for login>",
            "shared_folder": "/data/folder-with-files",
        })
    example: ClassVar[dict[str, Any]] = file_example("smb", {
        "host": "fileserver.plant.local", "username": "collector", "password": "${SMB_PASSWORD}",
        "shared_folder": "/exports/spraypaint"})

    connections: Annotated[list[SmbConnection], describe("Shares.", min_length=1)]

    def violations(self, path: JsonPath) -> list[Violation]:
        out = super().violations(path)
        for index, conn in enumerate(self.connections):
            if not conn.shared_folder.strip("/"):
                out.append(error("shared_folder must name the share (e.g. '/data/folder-with-files')",
                                 [*path, "connections", index, "shared_folder"]))
        return out

    def connect(self, index: int) -> Location:
        import fsspec

        conn = self.connections[index]
        port = conn.port or 445
        # no retries inside the client: the stream's backoff retries, and marks the stream
        fs = fsspec.filesystem("smb", host=conn.host, port=port, username=conn.user(),
                               password=conn.password, timeout=CONNECT_TIMEOUT,
                               register_session_retries=0, skip_instance_cache=True)
        return Location(fs, "/" + conn.shared_folder.strip("/"), url=f"smb://{conn.host}:{port}")

    def client_errors(self) -> tuple[type[BaseException], ...]:
        from smbprotocol.exceptions import SMBException

        # smbprotocol raises ValueError when it cannot connect to the server
        return (SMBException, ValueError)
