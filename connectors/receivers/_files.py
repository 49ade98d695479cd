"""What every file receiver shares: the stream and receiver keys (:class:`FileStream`,
:class:`FileReceiver`), a connection's common keys and the template of a file protocol.

A file protocol subclasses :class:`FileReceiver` and implements ``connect(index)``,
returning a :class:`~connectors.receivers._file_reader.Location`; listing, ordering,
state, incremental reads, parsers and ``delete_completed`` are the reader's
(:mod:`connectors.receivers._file_reader`, whose docstring says what is read when).

Implements the file receivers of ``shared/specs/factorytx-digest.md``.
"""

from __future__ import annotations

import posixpath
from fnmatch import fnmatchcase
from typing import Annotated, Any

import msgspec

from connectors.receivers._file_listing import Listings
from connectors.receivers._file_reader import (
    DTYPES,
    FileStreamReader,
    Location,
    identity,
    is_missing,
    modified_time,
)
from dataflows.sdk import (
    JsonPath,
    ParserConfig,
    ReceiverConfig,
    RunContext,
    StreamConfig,
    Template,
    Violation,
    choice_violations,
    describe,
    error,
    load_package,
    parsers,
    stream_matches,
)

__all__ = ["DTYPES", "Connection", "FileReceiver", "FileStream", "FileStreamReader", "Location", "file_example",
           "file_template", "identity", "is_missing", "modified_time"]

load_package("connectors.parsers")  # file receivers embed the union of the parsers
_ParserUnion = parsers.union()


class FileStream(StreamConfig, kw_only=True):
    """A stream of a file receiver."""

    file_filter: Annotated[list[str] | None, describe("Globs on file names, e.g. ['*.csv'].")] = None
    path_filter: Annotated[list[str] | None, describe("Globs on paths below the directory.")] = None
    dtypes: Annotated[dict[str, str] | None, describe(
        "Column types the stream keeps, e.g. {'temp': 'float'}: string, integer, float, boolean, "
        "datetime or date. Other columns keep the type they had in the stream's first file.")] = None
    parser: Annotated[str | None, describe("parser_name; by default the first parser whose "
                                                 "filter_stream matches the stream.")] = None

    @property
    def patterns(self) -> tuple[list[str], bool]:
        """The stream's globs and whether they match the whole path below the directory
        (``path_filter``) rather than the file name (``file_filter``, by default ``*``)."""
        if self.path_filter is not None:
            return self.path_filter, True
        return (self.file_filter if self.file_filter is not None else ["*"]), False

    def selects(self, relative_path: str) -> bool:
        """Whether this stream reads the file at ``relative_path`` (below a directory)."""
        patterns, whole_path = self.patterns
        name = relative_path if whole_path else posixpath.basename(relative_path)
        return any(fnmatchcase(name, p) for p in patterns)


#: A duration in seconds, zero or more.
_Seconds = Annotated[float, msgspec.Meta(ge=0)]


class FileReceiver(ReceiverConfig[FileStream, Listings], kw_only=True):
    """Keys shared by the file receivers (``localfile``, ``smb``, ``azure_data_lake``, ...)."""

    parsers: Annotated[list[_ParserUnion], describe("Parsers streams pick from.", min_length=1)]
    streams: Annotated[list[FileStream], describe("Streams and the files they read.", min_length=1)]
    delete_completed: Annotated[bool, describe("Delete a file once its records are delivered.")] = False
    process_files_alphabetically: Annotated[bool, describe("Order by path, not mtime.")] = False
    process_ordered_connections: Annotated[bool, describe("All files of a connection before the "
                                                          "next connection's.")] = False
    chunk_bytes: Annotated[int, describe("Most bytes parsed per batch.", ge=1024)] = 16 * 1024 * 1024
    minimum_file_age: Annotated[_Seconds | None, describe(
        "Seconds a file must go unmodified before a whole-file parser reads it, or before its last "
        "line without a newline is read (default: poll_interval).")] = None

    @property
    def still_seconds(self) -> float:
        """:attr:`minimum_file_age`, or ``poll_interval`` when it is not set."""
        return self.poll_interval if self.minimum_file_age is None else self.minimum_file_age

    def parser_for(self, stream: FileStream) -> ParserConfig | None:
        """The parser ``stream`` uses, or ``None`` when none is named or matches."""
        for parser in self.parsers:
            if stream.parser is None and stream_matches(parser.filter_stream, stream.key):
                return parser
            if parser.parser_name == stream.parser:
                return parser
        return None

    def violations(self, path: JsonPath) -> list[Violation]:
        out: list[Violation] = []
        names = [p.parser_name for p in self.parsers]
        for index, name in enumerate(names):
            if names.index(name) != index:
                out.append(error(f"duplicate parser_name {name!r}", [*path, "parsers", index, "parser_name"]))
        for index, stream in enumerate(self.streams):
            s_path = [*path, "streams", index]
            for column, dtype in (stream.dtypes or {}).items():
                out += choice_violations(dtype, DTYPES, "dtype", [*s_path, "dtypes", column])
            if stream.file_filter is not None and stream.path_filter is not None:
                out.append(error("use file_filter or path_filter, not both", s_path))
            if stream.parser is not None and stream.parser not in names:
                out.append(error(f'No parser named "{stream.parser}".', [*s_path, "parser"]))
            elif self.parser_for(stream) is None:
                out.append(error(f"no parser's filter_stream matches stream {stream.key}; name one "
                                 "with `parser`", s_path))
        return out

    def connect(self, index: int) -> Location:
        """Where connection ``index`` keeps its files: an fsspec file system built from
        the connection's keys, the directory on it, and the URL naming its files. The
        one hook a file protocol implements; no I/O (clients connect on first use)."""
        raise NotImplementedError(f"protocol {self.tag()!r} cannot run yet")

    def client_errors(self) -> tuple[type[BaseException], ...]:
        """Errors of the protocol's client library (besides ``OSError``) that mean the
        store is unreachable or refused us: the stream is marked and retried with backoff."""
        return ()

    def files_per_poll(self, index: int) -> int | None:
        """Most new or changed files of connection ``index`` taken per poll (``None``: all)."""
        return None

    def open_worker(self, ctx: RunContext) -> Listings:
        """The connections' listings, shared by the receiver's streams in this process."""
        return Listings()

    def open_stream(self, stream: FileStream, resume_state: Any, ctx: RunContext,
                    worker: Listings) -> FileStreamReader:
        return FileStreamReader(self, stream, resume_state, ctx, worker)


def file_template(protocol: str, name: str, description: str,
                  connection: dict[str, Any]) -> Template:
    """The configuration template of a file receiver (FactoryTX's shape): ``connection``
    with placeholders, a spreadsheet parser, one stream of ``*.csv`` files and the two
    ``convert_timestamps`` transforms a user fills in."""
    receiver = {
        "data_receiver_name": "receiver_0", "protocol": protocol, "delete_completed": False,
        "poll_interval": 4, "connections": [connection],
        "parsers": [{"parser_name": "parser_0", "parser_type": "spreadsheet", "filter_stream": ["*"],
                     "file_format": "csv"}],
        "streams": [{"asset": "asset_0", "stream_type": "cycle", "file_filter": ["*.csv"]}],
    }
    transforms = [
        {"transform_name": "transform_0", "transform_type": "convert_timestamps", "filter_stream": ["*"],
         "field_names": "<Please input the names of the fields to convert (e.g. \"datetime\")>",
         "timezone": "<Please enter the asset timezone>"},
        {"transform_name": "transform_1", "transform_type": "convert_timestamps", "filter_stream": ["*"],
         "field_names": "<Please input the name of the timestamp field (e.g. \"datetime\")>"},
    ]
    return Template(name, description, receiver, transforms)


def file_example(protocol: str, connection: dict[str, Any]) -> dict[str, Any]:
    """A worked example of a file receiver reading ``*.csv`` files through ``connection``."""
    return {"data_receiver_name": f"{protocol}_files", "protocol": protocol, "poll_interval": 30,
            "connections": [connection], "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
            "streams": [{"asset": "spraypaint", "stream_type": "csv", "file_filter": ["*.csv"]}]}


class Connection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Keys every remote file connection has."""

    connection_name: Annotated[str | None, describe("Name of the connection.")] = None
    retrieve_ordered_files: Annotated[bool, describe(
        "Accepted for FactoryTX configs: files are always taken oldest first (by path with "
        "process_files_alphabetically).")] = True
