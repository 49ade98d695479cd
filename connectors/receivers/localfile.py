"""The ``localfile`` receiver: CSV files in a local (or mounted) directory, through fsspec.

Connection keys: ``data_directory`` (FactoryTX's older name ``root_path`` is accepted)
and ``connection_name``. Everything else (filters, parsers, incremental reading,
``delete_completed``) is shared by every file receiver: see
:mod:`connectors.receivers._files`.

The worked example is ``LocalFileReceiver.example``.

Implements the localfile receiver of ``shared/specs/factorytx-digest.md`` and the
Localfile template of ``shared/specs/factorytx-rest-api.txt``.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar

from connectors.receivers._files import Connection, FileReceiver, Location, file_template
from dataflows.sdk import (
    JsonPath,
    Template,
    Violation,
    describe,
    error,
    receivers,
)


class LocalConnection(Connection, kw_only=True, frozen=True):
    """A directory on this machine."""

    data_directory: Annotated[str | None, describe("Directory holding the files.")] = None
    root_path: Annotated[str | None, describe("Older name of data_directory.")] = None

    @property
    def directory(self) -> str:
        """The directory, absolute, whichever key named it."""
        return os.path.abspath(self.data_directory or self.root_path or "")


def _localfile_template() -> Template:
    """FactoryTX's Localfile template: the file template, its first transform's
    ``field_names`` a list and its second one's the older ``field_name``."""
    template = file_template("localfile", "Localfile",
                             "A template for collecting data from the local filesystem",
                             {"data_directory": "/data/folder_with_data_files"})
    first, second = template.transforms
    first["field_names"] = [first["field_names"]]
    second["field_name"] = second.pop("field_names")
    return template


@receivers.register
class LocalFileReceiver(FileReceiver, tag="localfile", kw_only=True):
    """Reads files from local directories."""

    title: ClassVar[str] = "Local File"
    example: ClassVar[dict[str, Any]] = {
        "data_receiver_name": "files", "protocol": "localfile", "poll_interval": 5,
        "connections": [{"data_directory": "/data/spraypaint"}],
        "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
        "streams": [{"asset": "spraypaint", "stream_type": "csv", "file_filter": ["*.csv"],
                     "parser": "csv"}]}
    template: ClassVar[Template] = _localfile_template()

    connections: Annotated[list[LocalConnection], describe("Directories.", min_length=1)]

    def violations(self, path: JsonPath) -> list[Violation]:
        out = super().violations(path)
        for index, conn in enumerate(self.connections):
            if (conn.data_directory is None) == (conn.root_path is None):
                out.append(error("give exactly one of data_directory or root_path",
                                 [*path, "connections", index]))
        return out

    def connect(self, index: int) -> Location:
        import fsspec

        return Location(fsspec.filesystem("file"), self.connections[index].directory)
