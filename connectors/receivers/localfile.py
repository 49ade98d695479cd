"""The ``localfile`` receiver: CSV files in a local (or mounted) directory, through fsspec.

Connection keys: ``data_directory`` (FactoryTX's older name ``root_path`` is accepted)
and ``connection_name``. Everything else (filters, parsers, incremental reading,
``delete_completed``) is shared by every file receiver: see
:mod:`connectors.receivers._files`.

Example::

    {"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 5,
     "connections": [{"data_directory": "/data/spraypaint"}],
     "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
     "streams": [{"asset": "spraypaint", "stream_type": "csv", "file_filter": ["*.csv"],
                  "parser": "csv"}]}

Implements the localfile receiver of ``shared/specs/factorytx-digest.md`` and the
Localfile template of ``shared/specs/factorytx-rest-api.txt``.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar

import fsspec
import msgspec

from connectors.receivers._files import FileReceiver
from connectors.registry import receivers
from dataflows.config import JsonPath, Violation, describe, error


class LocalConnection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A directory on this machine."""

    data_directory: Annotated[str | None, describe("Directory holding the files.")] = None
    root_path: Annotated[str | None, describe("Older name of data_directory.")] = None
    connection_name: Annotated[str | None, describe("Name of the connection.")] = None

    @property
    def directory(self) -> str:
        """The directory, absolute, whichever key named it."""
        return os.path.abspath(self.data_directory or self.root_path or "")


@receivers.register
class LocalFileReceiver(FileReceiver, tag="localfile", kw_only=True):
    """Reads files from local directories."""

    title: ClassVar[str] = "Local File"

    connections: Annotated[list[LocalConnection], describe("Directories.", min_length=1)]

    def violations(self, path: JsonPath) -> list[Violation]:
        out = super().violations(path)
        for index, conn in enumerate(self.connections):
            if (conn.data_directory is None) == (conn.root_path is None):
                out.append(error("give exactly one of data_directory or root_path",
                                 [*path, "connections", index]))
        return out

    def roots(self) -> list[str]:
        return [conn.directory for conn in self.connections]

    def filesystem(self, shared: dict[str, Any]) -> fsspec.AbstractFileSystem:
        return fsspec.filesystem("file")
