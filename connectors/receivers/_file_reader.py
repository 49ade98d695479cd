"""The incremental file reader every file receiver runs (:class:`FileStreamReader`), with the
file store's locations and what a stream's state keeps of each file.

A file receiver lists its connections' directories through fsspec, picks the files its
stream's ``file_filter`` (globs on the file name) or ``path_filter`` (globs on the path
below the directory) select, and processes new or changed files oldest first (by
modification time; by path with ``process_files_alphabetically``). The streams of a
receiver in one process share one listing per connection and poll round
(:mod:`connectors.receivers._file_listing`): each poll sees one taken after the stream's
previous poll.

Its state per stream is the seen files, each with size, mtime, the byte offset and line
number read up to, and the header lines; only files still present are kept, so the
state stays bounded. A file that grows is read on from its offset (the header lines
are kept so every chunk parses alone); one whose size shrinks, or whose mtime changes
at the same size, was rewritten and is read again from the top. Files are read in
chunks of at most ``chunk_bytes`` cut at a line end, so a big file never sits in
memory whole. A last line without a newline is read once the file has been still for
``minimum_file_age`` seconds (default: ``poll_interval``, as in FactoryTX).

Any parser works here through the parser contract of :mod:`dataflows.sdk`
(``chunk_header_lines`` says whether a file may be cut at line ends, ``parse`` turns
bytes into a frame). A file that cannot be parsed (:class:`~dataflows.sdk.ParseError`)
marks the stream with file and line, is recorded as failed and skipped until it
changes; the other files and streams go on. With ``delete_completed`` a file is deleted once every
transmit its stream reaches has acknowledged its last batch in the delivery ledger.

Implements the file receivers of ``shared/specs/factorytx-digest.md``.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import polars as pl

from connectors.receivers._file_listing import Listings
from dataflows.sdk import (
    Batch,
    ParseError,
    Position,
    RunContext,
    SourceFile,
    StreamReader,
)

if TYPE_CHECKING:
    import fsspec

    from connectors.receivers._files import FileReceiver, FileStream

#: Most files one :meth:`FileStreamReader.read` takes (and fetches ahead), and the seconds
#: it may spend. bytewax reads every partition of a worker in turn before their batches
#: move on, so a long read holds back the transmits (a spool's forwarder idles meanwhile):
#: 2 s a read made CSV → Kafka with four streams 0.47× raw produce, 0.25 s 0.59×.
FILES_PER_READ = 200
READ_SECONDS = 0.25

#: The types a stream's ``dtypes`` may name.
DTYPES: dict[str, pl.DataType] = {"string": pl.String(), "integer": pl.Int64(), "float": pl.Float64(),
                                  "boolean": pl.Boolean(), "datetime": pl.Datetime("us"), "date": pl.Date()}


@dataclass(frozen=True, slots=True)
class Location:
    """One connection's files, as :meth:`FileReceiver.connect` returns them.

    :ivar fs: the fsspec file system.
    :ivar directory: the directory on ``fs`` holding the files (searched recursively).
    :ivar url: prefix naming the files in state, logs and records: the file's fsspec path
        follows it (``""`` for local files, ``"s3://"`` for S3, whose paths start with the
        bucket).
    :ivar container: for object stores, the bucket or container, which must exist; the
        directory below it is only a key prefix and may hold nothing yet. ``None``: the
        directory itself must exist.
    :ivar key_filter: a regular expression the path below ``container`` must match
        (``re.search``), or ``None``.
    """

    fs: fsspec.AbstractFileSystem
    directory: str
    url: str = ""
    container: str | None = None
    key_filter: re.Pattern[str] | None = None


def modified_time(info: Mapping[str, Any]) -> float:
    """The modification time of an fsspec ``info`` entry, in seconds since the epoch:
    ``mtime`` (local, SMB), ``LastModified`` (S3) or ``last_modified`` (Azure); 0 when
    the store gives none."""
    for key in ("mtime", "LastModified", "last_modified"):
        value = info.get(key)
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        if isinstance(value, int | float):
            return float(value)
    return 0.0


def is_missing(exc: OSError) -> bool:
    """Whether ``exc`` says the file does not exist (clients that do not raise
    ``FileNotFoundError`` still give ``ENOENT``: smbprotocol's ``SMBOSError``)."""
    return isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT


def identity(info: Mapping[str, Any]) -> tuple[int, float, str | None]:
    """What tells versions of a file apart, from its fsspec ``info`` entry: size in bytes,
    modification time (:func:`modified_time`) and the store's ETag (``None`` without one)."""
    etag = info.get("ETag") or info.get("etag")
    return int(info["size"]), modified_time(info), str(etag) if etag else None


class SeenFile(msgspec.Struct, kw_only=True):
    """State of one file: what was seen and how far it was read. ``etag`` is the object
    store's entity tag when it gives one: a changed tag is a changed file."""

    size: int
    mtime: float
    etag: str | None = None
    offset: int = 0
    line: int = 0
    prefix: bytes = b""
    failed: bool = False
    records: int = 0  # records handed on from this file so far: the next one's number
    born: float | None = None  # the mtime when it was first read: this version's identity


@dataclass(slots=True)
class _Candidate:
    key: str  # the location's url + path: names the file in state, logs and batches
    location: Location
    path: str
    order: tuple[Any, ...]
    size: int
    mtime: float
    etag: str | None
    connection: int  # the index of the connection it was listed on


class FileStreamReader(StreamReader):
    """Reads one stream of a file receiver; see the module docstring."""

    marker_category = "files"
    failure_text = "Reading files failed"

    def __init__(self, receiver: FileReceiver, stream: FileStream, resume_state: dict[str, Any] | None,
                 ctx: RunContext, listings: Listings | None = None) -> None:
        self._receiver = receiver
        self._listings = listings if listings is not None else Listings()  # shared by the receiver's streams
        self._listed: dict[int, int] = {}  # connection index -> the number of the listing last used
        self._opened_at = self._listings.number  # the first poll's listing is newer than this
        self._stream = stream
        self._patterns = stream.patterns
        parser = receiver.parser_for(stream)
        assert parser is not None, "validation makes sure every stream has a parser"
        self._parser = parser
        self._header_lines = parser.chunk_header_lines()
        self.retryable = (OSError, *receiver.client_errors())
        self._locations: list[Location] | None = None
        self._where: dict[str, tuple[Location, str]] | None = None  # key -> where, as last listed
        self._ctx = ctx
        state = resume_state or {}
        self._files: dict[str, SeenFile] = dict(state.get("files", {}))
        self._pending_delete: dict[str, str] = dict(state.get("pending_delete", {}))
        declared = {c: DTYPES[t] for c, t in (stream.dtypes or {}).items() if t in DTYPES}
        self._schema: dict[str, pl.DataType] = {**dict(state.get("schema", {})), **declared}
        self._text_columns = frozenset(c for c, t in declared.items() if t == pl.String)
        self._queue: list[_Candidate] = []
        self._prefetched: dict[str, tuple[tuple[int, int | None], bytes | BaseException]] = {}
        self._acks = ctx.acknowledgements(receiver.data_receiver_name, stream.key)
        self._not_files: set[str] = set()  # selected entries that are no files, warned about once
        self._settled = False  # whether the last listing held nothing left to read for this stream
        self._log = logging.getLogger(f"receiver.{receiver.data_receiver_name}")

    # -- state

    def snapshot(self) -> dict[str, Any]:
        return {"files": {p: msgspec.structs.replace(f) for p, f in self._files.items()},
                "pending_delete": dict(self._pending_delete), "schema": dict(self._schema)}

    def describe(self) -> str:
        done = sum(1 for f in self._files.values() if f.offset >= f.size)
        return (f"{len(self._files)} files seen ({done} read to the end), "
                f"{len(self._pending_delete)} awaiting delivery to be deleted")

    def quiet(self) -> bool:
        """True when this stream read everything its last listings held, has no file
        awaiting delivery to be deleted, and each connection's newest listing is newer
        than the one it used last yet changed nothing it selects (the poll would find
        nothing: it counts as that listing's poll), or is being taken by another stream
        (this poll is skipped, the next looks at it). False when no listing was taken
        since: the poll reads, and takes one."""
        if not self._settled or self._queue or self._pending_delete or \
                len(self._listed) != len(self._receiver.connections):
            return False
        patterns, whole_path = self._patterns
        newest: dict[int, int] = {}
        for index, used in self._listed.items():
            listing = self._listings.newest(index)
            if listing is None:
                return False
            if listing.number <= used:
                if not self._listings.taking(index):
                    return False
            elif listing.changed_for(patterns, whole_path, used):
                return False
            else:
                newest[index] = listing.number
        self._listed.update(newest)
        return True

    def abandon(self) -> None:
        self._settled = False
        self._queue = []
        self._locations = self._where = None  # connect again: a client may hold a dead connection

    def close(self) -> None:
        self._acks.close()

    # -- reading

    def read(self) -> tuple[list[Batch], bool]:
        """The next batches: chunks of the next new or changed files, up to ``chunk_bytes``
        in all, :data:`FILES_PER_READ` files or :data:`READ_SECONDS` seconds (many small
        files travel in one transmit write)."""
        if self._pending_delete:
            self._delete_delivered()
        if not self._queue:
            self._prefetched = {}
            self._queue = self._candidates()
            self._settled = not self._queue
            if not self._queue:
                return [], False
        self._prefetch()
        batches: list[Batch] = []
        size, files, started = 0, 0, time.monotonic()
        while self._queue and size < self._receiver.chunk_bytes and files < FILES_PER_READ \
                and time.monotonic() - started < READ_SECONDS:
            candidate = self._queue[0]
            try:
                batch, finished = self._read_chunk(candidate)
            except self.retryable:
                if not batches:
                    raise
                break  # hand on what was read; the next read meets the failure again
            if finished:
                self._queue.pop(0)
                files += 1
            if batch is not None:
                batches.append(batch)
                size += batch.frame.estimated_size()
            if not finished:
                break  # a big file: one chunk per read
        return batches, bool(self._queue)

    def _range(self, candidate: _Candidate, seen: SeenFile | None) -> tuple[int, int | None]:
        """The bytes of ``candidate`` to read next: ``(start, end)``, ``end`` ``None`` for
        the rest of the file (a whole-file parser takes it all)."""
        if self._header_lines is None or seen is None:
            start = 0
        else:
            start = seen.offset
        if self._header_lines is None:
            return 0, None
        return start, min(start + self._receiver.chunk_bytes, candidate.size)

    def _prefetch(self) -> None:
        """Fetch the next small files of the queue at once: concurrently on object stores
        (fsspec's ``cat_ranges``), so a folder of many small files is not read one round
        trip at a time. What a read does not use waits for the next read, until the queue
        is listed again."""
        if self._queue and self._queue[0].key in self._prefetched:
            return
        self._prefetched = {}
        by_location: dict[int, list[tuple[_Candidate, int, int | None]]] = {}
        budget = self._receiver.chunk_bytes
        for candidate in self._queue[:FILES_PER_READ]:
            start, end = self._range(candidate, self._files.get(candidate.key))
            budget -= (end if end is not None else candidate.size) - start
            if budget < 0:
                break
            by_location.setdefault(id(candidate.location), []).append((candidate, start, end))
        for wanted in by_location.values():
            if len(wanted) < 2:
                continue
            fs = wanted[0][0].location.fs
            results = fs.cat_ranges([c.path for c, _, _ in wanted], [s for _, s, _ in wanted],
                                    [e for _, _, e in wanted], on_error="return")
            for (candidate, start, end), result in zip(wanted, results, strict=True):
                self._prefetched[candidate.key] = ((start, end), result)

    def _connected(self) -> list[Location]:
        if self._locations is None:
            self._locations = [self._receiver.connect(i) for i in range(len(self._receiver.connections))]
        return self._locations

    def _listing(self) -> dict[str, tuple[Location, str, int, float, str | None, int]]:
        """Every file the stream selects, by key: location, path, size, mtime, etag and the
        connection's index. Each connection's listing is one taken after this stream's
        previous one, shared with the receiver's other streams (:mod:`._file_listing`)."""
        listing: dict[str, tuple[Location, str, int, float, str | None, int]] = {}
        patterns, whole_path = self._patterns
        for index, location in enumerate(self._connected()):
            shared = self._listings.listing(index, location, self._listed.get(index, self._opened_at))
            self._listed[index] = shared.number
            for path, _, info in shared.selected(patterns, whole_path):
                kind = info.get("type", "file")
                if kind != "file":
                    self._skip_once(location.url + path, bool(info.get("islink")))
                    continue
                if location.key_filter is not None and location.container is not None and \
                        not location.key_filter.search(posixpath.relpath(path, location.container)):
                    continue
                listing[location.url + path] = (location, path, *identity(info), index)
        self._where = {key: (entry[0], entry[1]) for key, entry in listing.items()}
        return listing

    def _skip_once(self, key: str, link: bool) -> None:
        """Warn once (a marker) that ``key``, which the stream selects, is no file to read."""
        if key in self._not_files:
            return
        if len(self._not_files) < 1000:  # bounded, as the listing is
            self._not_files.add(key)
        what = ("a symbolic link that leads nowhere, or in a loop" if link
                else "not a regular file (a FIFO, a socket or a device)")
        self.report_warning(f"{key} is {what}: skipped")

    def _candidates(self) -> list[_Candidate]:
        """The new or changed files to read, in order, at most ``files_per_poll`` of each
        connection; a file that left the store leaves the state."""
        listing = self._listing()
        for key in [k for k in self._files if k not in listing and k not in self._pending_delete]:
            del self._files[key]  # keep only files still present: the state stays bounded
        out = []
        for key, (location, path, size, mtime, etag, index) in listing.items():
            seen = self._files.get(key)
            if key in self._pending_delete:
                continue
            changed = seen is not None and (size, mtime, etag) != (seen.size, seen.mtime, seen.etag)
            if changed and (seen.failed or size < seen.offset or size == seen.size):
                self._log.info("%s: %s was rewritten; reading it again", self._stream.key, key)
                seen = self._files[key] = SeenFile(size=size, mtime=mtime, etag=etag)
            if seen is None or (size > seen.offset and not seen.failed):
                order_key = path if self._receiver.process_files_alphabetically else (mtime, path)
                order = (index if self._receiver.process_ordered_connections else 0, order_key)
                out.append(_Candidate(key, location, path, order, size, mtime, etag, index))
        out.sort(key=lambda c: c.order)
        return self._per_poll(out, len(listing))

    def _per_poll(self, ordered: list[_Candidate], present: int) -> list[_Candidate]:
        """At most ``files_per_poll`` of each connection's ``ordered`` candidates (the rest
        wait for the next polls), logged with the ``present`` files' count."""
        taken: dict[int, int] = {}
        kept = []
        for candidate in ordered:
            limit = self._receiver.files_per_poll(candidate.connection)
            if limit is None or taken.get(candidate.connection, 0) < limit:
                taken[candidate.connection] = taken.get(candidate.connection, 0) + 1
                kept.append(candidate)
        if kept:
            more = f"; {len(ordered) - len(kept)} wait for the next polls" if len(kept) < len(ordered) else ""
            self._log.info("%s: %d new or changed files of %d present%s", self._stream.key, len(ordered),
                           present, more)
        return kept

    def _read_chunk(self, candidate: _Candidate) -> tuple[Batch | None, bool]:
        """The next batch of ``candidate`` (None: nothing ready in it yet), and whether to
        go on reading: its next complete lines (a whole-file parser: the whole file, once
        it is still), parsed."""
        key = candidate.key
        seen = self._files.get(key) or SeenFile(size=candidate.size, mtime=candidate.mtime,
                                                etag=candidate.etag)
        whole = self._header_lines is None  # the parser needs whole files (or UTF-16 text)
        still = (self._ctx.now().timestamp() - candidate.mtime) >= self._receiver.still_seconds
        if whole and not still:
            return None, True  # still being written: read it whole once it is still
        if whole:
            seen.offset = 0
            limit = self._parser.whole_file_limit()
            if limit is not None and candidate.size > limit[0]:  # refused before it is fetched
                return self._skip(candidate, ParseError(
                    candidate.key, None, f"{candidate.size} bytes, more than {limit[1]} ({limit[0]})")), True
        data = self._fetch(candidate, seen)
        if data is None:
            return None, True
        if not whole:
            data, problem = self._complete_lines(candidate, seen, data, still)
            if problem is not None:
                return self._skip(candidate, problem), True
        if candidate.size == 0 and still:  # an empty file is seen (and deleted) like any other
            return self._read(candidate, seen, b"", pl.DataFrame())
        if not data:
            return None, True  # nothing complete yet: try again at the next poll
        try:
            frame = self._parse(candidate, seen, data, whole)
        except ParseError as exc:
            return self._skip(candidate, exc), True
        return self._read(candidate, seen, data, self._conform(frame, key))

    def _fetch(self, candidate: _Candidate, seen: SeenFile) -> bytes | None:
        """The bytes of ``candidate`` from its offset (fetched ahead, or one ranged GET),
        or None when it vanished since the listing (a warning; read again if it comes back)."""
        try:
            start, end = self._range(candidate, seen)
            fetched = self._prefetched.pop(candidate.key, None)
            if fetched is not None and fetched[0] == (start, end):
                if isinstance(fetched[1], BaseException):
                    raise fetched[1]
                return fetched[1]
            # one ranged GET on object stores (open() would ask for the size first)
            return candidate.location.fs.cat_file(candidate.path, start=start, end=end)
        except OSError as exc:
            if not is_missing(exc):
                raise
            self.report_warning(f"{candidate.key} vanished between listing and reading; it is read again "
                                "if it comes back")
            self._files.pop(candidate.key, None)
            return None

    def _complete_lines(self, candidate: _Candidate, seen: SeenFile, data: bytes,
                        still: bool) -> tuple[bytes, ParseError | None]:
        """What of ``data`` may be parsed now: its complete lines, and a last line without a
        newline only once the file is still (alone, so a bad last line costs only itself);
        a :class:`ParseError` for a line longer than ``chunk_bytes``."""
        at_end = seen.offset + len(data) >= candidate.size
        complete = data.rfind(b"\n") + 1  # the end of the complete lines
        if not (at_end and still):  # the rest waits for its newline
            if not complete and len(data) >= self._receiver.chunk_bytes:
                return b"", ParseError(
                    candidate.key, seen.line + 1, f"a line longer than chunk_bytes ({self._receiver.chunk_bytes} "
                    f"bytes) starts at byte {seen.offset}")
            return data[:complete], None
        if 1 < complete < len(data):
            # the last line lacks its newline (a truncated file): the complete lines first,
            # that line on its own at the next read, so a bad last line costs only itself
            return data[:complete], None
        return data, None

    def _parse(self, candidate: _Candidate, seen: SeenFile, data: bytes, whole: bool) -> pl.DataFrame:
        """``data`` (from ``seen.offset``) parsed under the file's header lines.

        :raises ParseError: the parser refused it, or failed otherwise (named as such).
        :raises OSError: our own disk failed (a parser keeping bytes): retried, the file kept.
        """
        key = candidate.key
        file = SourceFile(key, candidate.size, datetime.fromtimestamp(candidate.mtime, UTC),
                          self._ctx.component_dir(self._parser.parser_name))
        try:
            if seen.offset == 0:
                if not whole:
                    head = data.split(b"\n", self._header_lines)[: self._header_lines]
                    seen.prefix = b"".join(line + b"\n" for line in head)
                return self._parser.parse(b"", data, source=key, first_line=1, warn=self.report_warning,
                                          text_columns=self._text_columns, file=file)
            return self._parser.parse(seen.prefix, data, source=key, first_line=seen.line + 1,
                                      warn=self.report_warning, text_columns=self._text_columns, file=file)
        except (ParseError, OSError):
            raise
        except Exception as exc:  # a parser that fails otherwise must not stop the stream either
            self._log.debug("%s: parser %r failed on %s", self._stream.key, self._parser.parser_name, key,
                            exc_info=True)
            raise ParseError(key, None, f"the {self._parser.tag()} parser failed: "
                                        f"{type(exc).__name__}: {exc}") from exc

    def _conform(self, frame: pl.DataFrame, path: str) -> pl.DataFrame:
        """``frame`` with each column in the stream's type: declared (``dtypes``), or the
        type it had when the stream first saw it. A value that does not fit becomes null,
        with a warning naming file, column and examples."""
        fixed = []
        for name, dtype in frame.schema.items():
            target = self._schema.get(name)
            if target is None:
                if dtype != pl.Null:
                    self._schema[name] = dtype
                continue
            if dtype == pl.Null:  # no value at all in this chunk
                fixed.append(pl.col(name).cast(target))
                continue
            if dtype == target:
                continue
            column = frame[name]
            cast = column.cast(target, strict=False)
            lost = cast.is_null() & column.is_not_null()
            if dtype.is_numeric() and target.is_numeric():  # 1.5 into an integer column does not fit
                lost = lost | (cast.cast(dtype, strict=False) != column).fill_null(False)
            if lost.any():
                examples = ", ".join(repr(v) for v in column.filter(lost).unique(maintain_order=True)
                                     .head(3).to_list())
                self.report_warning(f"{path}: {lost.sum()} values of column {name!r} do not fit its "
                                    f"type {target} and became null (e.g. {examples})")
            fixed.append(pl.when(lost).then(None).otherwise(cast).alias(name))
        return frame.with_columns(fixed) if fixed else frame

    def _read(self, candidate: _Candidate, seen: SeenFile, data: bytes,
              frame: pl.DataFrame) -> tuple[Batch | None, bool]:
        """Record ``data`` (parsed into ``frame``) as read: the batch to hand on, and whether
        the file is read to its end."""
        key = candidate.key
        whole = self._header_lines is None
        if seen.born is None or whole:
            seen.born, seen.records = candidate.mtime, 0  # a whole file is read again as a new version
        position = Position.records(key, seen.records, frame.height,
                                    f"{seen.born!r}:{candidate.size}" if whole else repr(seen.born))
        seen.records += frame.height
        seen.offset += len(data)
        seen.line += data.count(b"\n")
        seen.size, seen.mtime, seen.etag = max(candidate.size, seen.offset), candidate.mtime, candidate.etag
        self._files[key] = seen
        finished = seen.offset >= candidate.size
        ack_key = None
        if finished and self._receiver.delete_completed:
            ack_key = f"{key}|{seen.size}|{seen.mtime}"
            self._pending_delete[key] = ack_key
        if frame.height == 0 and ack_key is None:
            return None, finished
        return Batch(self._receiver.data_receiver_name, self._stream.key, frame, key, ack_key,
                     position=position if frame.height else None), finished

    def _skip(self, candidate: _Candidate, exc: ParseError) -> None:
        """Mark the stream with ``exc`` and skip the file until it changes."""
        self.report_bad_input(f"{exc}; the file is skipped until it changes")
        self._files[candidate.key] = SeenFile(size=candidate.size, mtime=candidate.mtime,
                                              etag=candidate.etag, offset=candidate.size, failed=True)

    def _delete_delivered(self) -> None:
        for key, ack_key in list(self._pending_delete.items()):
            if not self._acks.delivered(ack_key):
                continue
            if self._where is None:
                self._listing()  # after a restart: find which connection holds the file
            where = self._where.get(key) if self._where is not None else None
            if where is not None:
                location, path = where
                try:
                    info = location.fs.info(path)
                except OSError as exc:
                    if not is_missing(exc):
                        raise
                    info = None
                seen = self._files.get(key)
                if info is not None and seen is not None and identity(info) != (seen.size, seen.mtime,
                                                                                 seen.etag):
                    self._log.info("%s: %s changed after it was read; reading on before deleting it",
                                   self._stream.key, key)
                    self._acks.forget(ack_key)
                    del self._pending_delete[key]
                    continue  # its state stays: the listing finds the rest and reads on
                if info is not None:
                    location.fs.rm_file(path)  # one object: a bulk delete needs checksums some stores lack
                    self._log.info("%s: deleted %s, its records are delivered", self._stream.key, key)
            self._acks.forget(ack_key)
            del self._pending_delete[key]
            self._files.pop(key, None)
