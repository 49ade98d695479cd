"""The component SDK: what a receiver, parser, transform or transmit is made of.

A component is one module holding a config Struct registered with its kind's registry
(:mod:`dataflows.registry`), a worked ``example``, for receivers a ``template``, and
the code it runs. The Struct subclasses one of the bases here and fills in its hook:

================  ====================  ==============================================
kind              base                  hook (no I/O in the Struct or in the hook call)
================  ====================  ==============================================
receiver          :class:`ReceiverConfig`  ``open_stream(...)`` -> a :class:`StreamReader`
parser            :class:`ParserConfig`    ``parse(prefix, body, ...)`` -> a frame, or
                                           :class:`ParseError`
transform         :class:`TransformConfig` ``apply(frame)`` -> (frame, warnings)
transmit          :class:`TransmitConfig`  ``open_writer(ctx, report)`` -> a
                                           :class:`TransmitWriter`
================  ====================  ==============================================

The runtime (:mod:`dataflows.runtime`, :mod:`dataflows.delivery`) does the rest: polling,
backoff, markers, state and restream for receivers; the ledger, delivered counts,
acknowledgements, error markers and progress lines for transmits.

Fields are declared with :func:`describe` (description, constraints, ``secret``,
``choices``), so validation, redaction, ``/v1/meta`` and the docs read one source.

This module is the connectors' one door to the core (``tests/test_architecture.py``
holds them to it): it also hands out the registries, the record model
(:class:`Batch`, :class:`StreamKey`), the run context with its per-worker services
(:class:`RunContext`: clock, durable :class:`Storage`, delivery
:class:`Acknowledgements`), the transmits' :class:`TransmitReport`, the durable outbox
and its sender, the backoff policy and the timestamp helpers.

Implements the component model of ``shared/specs/factorytx-digest.md``; see
``docs/connectors.md`` ("Writing a connector").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    TypeVar,
    runtime_checkable,
)

import msgspec

from dataflows.backoff import Backoff
from dataflows.context import Acknowledgements, RunContext, utcnow
from dataflows.diskspace import DiskFull, is_disk_full, wait_for_space
from dataflows.fields import (
    DEFAULT_SPOOL_BYTES,
    FilterStream,
    JsonPath,
    Level,
    NonEmptyStr,
    NonNegativeInt,
    PollInterval,
    Port,
    SpoolMaxBytes,
    Violation,
    choice_violations,
    describe,
    error,
    field_meta,
    http_url_violations,
    is_placeholder,
    secret_paths,
    timezone_violations,
    unwrap,
    warning,
)
from dataflows.outbox import Entry, Outbox
from dataflows.outbox_sender import OutboxSender, OutboxWriter, Refused, SendFailed
from dataflows.positions import Position
from dataflows.records import Batch, StreamKey, json_values, records_frame, stream_matches
from dataflows.registry import load_package, parsers, receivers, transforms, transmits
from dataflows.report import AckWait, TransmitReport, WriteInterrupted
from dataflows.storage import Storage
from dataflows.timestamps import chrono_format, localize

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "DEFAULT_SPOOL_BYTES", "AckWait", "Acknowledgements", "Backoff", "Batch", "Component", "DiskFull", "Entry",
    "FilterStream", "JsonPath", "Level", "NonEmptyStr", "NonNegativeInt", "Outbox", "OutboxSender",
    "OutboxWriter", "ParseError", "ParserConfig", "PollInterval", "Port", "Position", "ReceiverConfig",
    "RecoverableWriter", "Refused", "RunContext", "SendFailed", "SourceFile", "SpoolMaxBytes",
    "Storage", "StreamConfig", "StreamKey", "StreamReader", "Template", "TransformConfig",
    "TransactionalWriter", "TransmitConfig", "TransmitReport", "TransmitWriter", "Violation",
    "WriteInterrupted", "Written", "chrono_format",
    "choice_violations", "describe", "error", "field_meta", "http_url_violations", "is_placeholder", "json_values",
    "load_package", "localize", "parsers", "receivers", "records_frame", "secret_paths",
    "is_disk_full", "stream_matches", "timezone_violations", "transforms", "transmits", "unwrap",
    "utcnow", "wait_for_space", "warning",
]

#: A receiver's stream config type (:class:`StreamConfig` subclass).
StreamT = TypeVar("StreamT", bound="StreamConfig")
#: What a receiver shares among its streams on one worker (:meth:`ReceiverConfig.open_worker`).
WorkerT = TypeVar("WorkerT")


@dataclass(frozen=True, slots=True)
class SourceFile:
    """The file a parser is given, as the file receiver listed it.

    :ivar path: the file's name in logs and records: the store's URL and path
        (``s3://bucket/key``, ``smb://host:445/share/dir/file``; a plain path for local files).
    :ivar size: its size in bytes when listed.
    :ivar modified: its last modification time (UTC-aware).
    :ivar store: the parser's own data directory (``$FACTORYFLOW_HOME/components/<parser_name>``),
        for a parser that keeps bytes (``attachment``); created by the parser when needed.
    """

    path: str
    size: int
    modified: datetime
    store: Path


class ParseError(ValueError):
    """Input cannot be parsed; ``source`` (file name) and ``line`` (1-based, when known) say where.

    Raised by parsers; the file receivers mark the stream with it and skip the file until
    it changes.
    """

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        self.source, self.line, self.reason = source, line, reason
        where = f"{source}, line {line}" if line is not None else source
        super().__init__(f"{where}: {reason}")


class StreamReader:
    """Reads one stream of a receiver; built by :meth:`ReceiverConfig.open_stream`.

    Readers do no I/O in their constructor and never sleep: :meth:`read` returns what is
    ready and the runtime polls again ``poll_interval`` seconds later. The runtime
    retries the exceptions in :attr:`retryable` with backoff, marking the stream (category
    :attr:`marker_category`, message starting with :attr:`failure_text`) while it fails.
    Input that is bad but skipped (a malformed file) is reported with
    :meth:`report_bad_input`: the stream is marked and reading goes on.
    """

    #: Exceptions that mean "try again later" (connection refused, file busy, ...).
    retryable: tuple[type[BaseException], ...] = (OSError,)
    #: The ``category`` of the stream's error marker while reads fail.
    marker_category: str = "read"
    #: How the marker's message starts, e.g. ``"Query failed"``.
    failure_text: str = "Read failed"
    #: The waits between retries while :meth:`read` fails; None: the runtime's policy (the
    #: ``poll_interval`` doubled per failure, up to 30 s). A reader whose ``read`` only
    #: looks at what a background connection gathered (OPC UA) retries sooner, so its
    #: marker clears soon after the connection is back.
    retry_policy: Backoff | None = None

    def read(self) -> tuple[list[Batch], bool]:
        """The batches ready now, and whether more are ready without waiting for a poll."""
        raise NotImplementedError

    def snapshot(self) -> Any:
        """The state after the last batch returned by :meth:`read` (small, picklable)."""
        raise NotImplementedError

    def quiet(self) -> bool:
        """Whether a :meth:`read` now would surely find nothing and change no recoverable
        state (what :meth:`snapshot` returns), known without I/O (a reader may note what it
        looked at, e.g. the shared listing it checked): the runtime then skips the poll (no
        read, no hop to the stream's thread), so an idle stream costs next to nothing.
        Called on the worker's thread, between reads and while the stream does not fail;
        must not block. The default, False, reads at every poll."""
        return False

    def describe(self) -> str:
        """The state in a few words, for logs and markers (``{'id': 0}``, ``3 files seen``)."""
        return repr(self.snapshot())

    def abandon(self) -> None:
        """Drop work in hand after a failure; the next :meth:`read` starts from the state."""

    def close(self) -> None:
        """Release connections and files."""

    def report_bad_input(self, message: str) -> None:
        """Bad input was skipped (``message`` names it: file and line, row); the runtime
        logs it and marks the stream (category ``input``, error) after this :meth:`read`."""
        self.__dict__.setdefault("_bad_input", []).append(message)

    def report_warning(self, message: str) -> None:
        """Input was read with a problem (lines dropped, values that did not fit); the
        runtime logs it and marks the stream (category ``input warning``, warning)."""
        self.__dict__.setdefault("_warnings", []).append(message)

    def take_bad_input(self) -> list[str]:
        """The bad-input reports since the last call (for the runtime)."""
        return self.__dict__.pop("_bad_input", [])

    def take_warnings(self) -> list[str]:
        """The warnings since the last call (for the runtime)."""
        return self.__dict__.pop("_warnings", [])


#: What a transmit's write did: ``"delivered"`` (the endpoint has the records) or
#: ``"stored"`` (a durable outbox has them; its sender reports deliveries later).
Written = Literal["delivered", "stored"]


class TransmitWriter(Protocol):
    """Writes batches for one transmit on one worker; built by :meth:`TransmitConfig.open_writer`."""

    def write(self, batches: list[Batch]) -> Written:
        """Write ``batches`` durably (fsync, broker acknowledgement, outbox commit) before
        returning. Raise when the write failed: the dataflow stops before its next
        snapshot, so no receiver state runs ahead of delivery."""
        ...

    def close(self) -> None:
        """Flush and release connections."""
        ...


class RecoverableWriter(TransmitWriter, Protocol):
    """A writer that can take back what it wrote after the last recovery snapshot, so a
    crash (SIGKILL, power loss) replays nothing twice into it: exactly once. A transmit
    declares it with :attr:`TransmitConfig.recoverable`; its sink is then one bytewax
    partition, snapshotted with the receivers' state at each epoch."""

    def snapshot(self) -> Any:
        """What was written so far (small and picklable: e.g. file sizes)."""
        ...

    def resume(self, state: Any) -> None:
        """Called once, before any write, with the :meth:`snapshot` of the epoch the
        dataflow resumes from (``None`` on a first run): drop whatever was written after
        it, since the receivers replay those records."""
        ...


@runtime_checkable
class TransactionalWriter(TransmitWriter, Protocol):
    """A spooled transmit's writer whose endpoint commits a write atomically with the spool
    records it came from (Kafka transactions): exactly once across crashes of the job and
    of the forwarder. The forwarder (:mod:`dataflows.spool`) asks :meth:`committed` once
    the writer is open and deletes what the endpoint holds already, then hands each write
    its marks; after a failed write it opens a new writer, which asks again."""

    def committed(self, spool: str) -> dict[str, int]:
        """Per stream (``asset:stream_type``), the last record id of the spool ``spool``
        (:meth:`~dataflows.outbox.Outbox.identity`) the endpoint committed. It fences any
        older writer of the same shard first (a zombie's write can then never commit)."""
        ...

    def write_marked(self, batches: list[Batch], spool: str, marks: dict[str, int]) -> Written:
        """Write ``batches`` and ``marks`` (per stream, the last spool record id among
        them) in one atomic commit; like :meth:`TransmitWriter.write` otherwise."""
        ...


@dataclass(frozen=True)
class Template:
    """A receiver's configuration template for ``GET /v1/config/templates``.

    :ivar name: the template's name, e.g. ``"SQL"``.
    :ivar description: one sentence.
    :ivar receiver: the ``data_receiver`` entry, with ``<Please ...>`` placeholders.
    :ivar transforms: the ``transforms`` the template suggests.
    """

    name: str
    description: str
    receiver: dict[str, Any]
    transforms: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- config bases


class Component(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every config Struct: strict, keyword-only, immutable.

    Class attributes a component sets: ``title`` (display name), ``example`` (a worked
    config entry that validates; for runnable components one that runs), ``runnable``.
    Subclasses may override :meth:`violations` to check their own values.
    """

    #: Whether this version of factoryflow can run the component (config-only otherwise).
    runnable: ClassVar[bool] = True
    #: Display name (``/v1/meta``, the README); default: the tag in words.
    title: ClassVar[str | None] = None
    #: A worked example of the component's config entry.
    example: ClassVar[dict[str, Any] | None] = None

    @classmethod
    def tag(cls) -> str:
        """The component's tag value (``protocol``, ``transmit_type``, ...)."""
        return str(cls.__struct_config__.tag)

    @classmethod
    def display_name(cls) -> str:
        """:attr:`title`, else the tag in words."""
        return cls.title or cls.tag().replace("_", " ").title()

    def violations(self, path: JsonPath) -> Iterable[Violation]:
        """Problems in this component's values; ``path`` is where it sits in the document."""
        return ()

    def from_environment(self, environ: Mapping[str, str],
                         path: JsonPath) -> tuple[Component, list[Violation]]:
        """This component with the settings the config omits taken from ``environ``, and an
        error for each one missing everywhere (a warning when the config is only validated).

        The default takes nothing from the environment.
        """
        return self, []


class StreamConfig(Component, kw_only=True):
    """A stream of a receiver: ``asset`` + ``stream_type`` plus protocol keys."""

    asset: Annotated[NonEmptyStr, describe("Name of the asset, e.g. 'lasercut'.")]
    stream_type: Annotated[NonEmptyStr, describe("Type of the stream, e.g. 'cycle'.")]

    @property
    def key(self) -> StreamKey:
        """This stream's :class:`~dataflows.records.StreamKey`."""
        return StreamKey(self.asset, self.stream_type)


class ReceiverConfig(Component, Generic[StreamT, WorkerT], tag_field="protocol", kw_only=True):
    """Base of every ``data_receiver`` entry; the subclass's tag is its ``protocol``.

    Generic in its stream config type and in what its streams share on a worker, so a
    subclass names both once (``class SqlReceiver(ReceiverConfig[SqlStream, SqlEngines],
    tag="sql")``) and its hooks receive them typed. A receiver also carries its
    :class:`Template` (``template``).
    """

    #: The receiver's configuration template (``GET /v1/config/templates``).
    template: ClassVar[Template | None] = None

    data_receiver_name: Annotated[
        NonEmptyStr, describe("Name of the receiver; unique; keys the progress of its streams.")
    ]
    poll_interval: PollInterval = 5.0

    @property
    def stream_list(self) -> list[StreamT]:
        """The receiver's streams (every protocol has a ``streams`` list)."""
        return list(getattr(self, "streams", []))

    def open_worker(self, ctx: RunContext) -> WorkerT:
        """What this receiver's streams running in one process share (database engines,
        a broker session, an OPC UA connection): called once, before the first
        :meth:`open_stream` there, under a lock. No I/O here: connect on the first read.
        The default shares nothing (``None``)."""
        return None  # type: ignore[return-value]

    def open_stream(self, stream: StreamT, resume_state: Any, ctx: RunContext,
                    worker: WorkerT) -> StreamReader:
        """A reader of ``stream`` resuming from ``resume_state`` (``None``: first run, or a
        restream). No I/O here. ``worker`` is what :meth:`open_worker` returned.

        :raises NotImplementedError: the protocol is config-only in this version.
        """
        raise NotImplementedError(f"protocol {self.tag()!r} cannot run yet")


class ParserConfig(Component, tag_field="parser_type", kw_only=True):
    """Base of every parser of a file receiver; the subclass's tag is its ``parser_type``.

    Parsers are pure: bytes in, a frame out. The file receivers call
    :meth:`chunk_header_lines` once per file and :meth:`parse` per chunk.
    """

    parser_name: Annotated[NonEmptyStr, describe("Name streams use to pick this parser.")]
    filter_stream: FilterStream = msgspec.field(default_factory=lambda: ["*"])

    def chunk_header_lines(self) -> int | None:
        """How a file may be cut: ``None``, the parser needs the whole file at once (the
        default: Excel, Parquet, JSON documents); ``N``, at line ends (``b"\\n"``), each
        later chunk parsed under the file's first ``N`` lines (CSV: its header)."""
        return None

    def whole_file_limit(self) -> tuple[int, str] | None:
        """For a parser that needs whole files: the most bytes a file may have, and the key
        that sets it (e.g. ``(67108864, "max_document_bytes")``). The file receivers refuse
        a larger file before fetching it, with a marker naming the key; None: no limit."""
        return None

    def parse(self, prefix: bytes, body: bytes, *, source: str, first_line: int,
              warn: Callable[[str], None] | None = None,
              text_columns: Iterable[str] = (), file: SourceFile | None = None) -> pl.DataFrame:
        """One row per record of ``body``.

        :param prefix: the file's first ``chunk_header_lines()`` lines when ``body`` is a
            later chunk; empty when ``body`` starts the file (or is the whole file).
        :param source: the file's path, for errors.
        :param first_line: the 1-based file line ``body`` starts at.
        :param warn: takes warnings about input parsed anyway (lines dropped, a guessed
            setting), naming file and line; the file receiver marks the stream with them.
        :param text_columns: columns the stream declares as strings: read them as text,
            as written (``007`` stays ``007``). The file receiver casts every other column
            to the stream's type.
        :param file: the file ``body`` comes from (size, modification time, the parser's
            data directory); the file receivers always pass it, tests may not.
        :raises ParseError: the input cannot be parsed, naming ``source`` and the line.
        """
        raise NotImplementedError(f"parser_type {self.tag()!r} cannot run yet")


class TransformConfig(Component, tag_field="transform_type", kw_only=True):
    """Base of every ``transforms`` entry; the subclass's tag is its ``transform_type``."""

    transform_name: Annotated[NonEmptyStr, describe("Name of the transform; unique.")]
    filter_stream: FilterStream = msgspec.field(default_factory=lambda: ["*"])

    def apply(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
        """The transformed frame and warnings about it (pure: no I/O).

        :raises NotImplementedError: the transform is config-only in this version.
        """
        raise NotImplementedError(f"transform_type {self.tag()!r} cannot run yet")

    def apply_to(self, batch: Batch, ctx: RunContext | None = None) -> tuple[pl.DataFrame, list[str]]:
        """Like :meth:`apply`, for a transform that needs the batch's stream (``asset``,
        ``stream_type``) or source, or the installation (``ctx``: the ``tap`` writes below
        its home); the runtime calls this one. The default applies :meth:`apply` to the
        frame."""
        return self.apply(batch.frame)

    def streams_out(self, stream: StreamKey) -> list[StreamKey]:
        """The streams a batch of ``stream`` leaves this transform on (default: its own);
        ``replicate`` moves it to one stream per asset. The dataflow uses it to know which
        transmits a receiver's batches reach."""
        return [stream]

    def apply_batches(self, batch: Batch, ctx: RunContext | None = None) -> tuple[list[Batch], list[str]]:
        """The batches ``batch`` becomes, and warnings; the runtime calls this one. The
        default is one batch holding :meth:`apply_to`'s frame; a transform that copies
        records to other streams returns a batch per stream (each with ``origin`` set,
        so acknowledgements reach the receiver)."""
        frame, warnings = self.apply_to(batch, ctx)
        return [batch.with_frame(frame)], warnings


class TransmitConfig(Component, tag_field="transmit_type", kw_only=True):
    """Base of every ``data_transmit`` entry; the subclass's tag is its ``transmit_type``.

    A transmit implements :meth:`open_writer`; the runtime wraps the writer in a bytewax
    sink (:meth:`sink`) that keeps the ledger for it.
    """

    #: The transmit's entry in receivers' templates (placeholders for what a user types).
    template: ClassVar[dict[str, Any] | None] = None
    #: What a record is called in progress lines (``+12 messages, ...``).
    record_noun: ClassVar[str] = "records"

    transmit_name: Annotated[NonEmptyStr, describe("Name of the transmit; unique.")]
    filter_stream: FilterStream = msgspec.field(default_factory=lambda: ["*"])

    def open_writer(self, ctx: RunContext, report: TransmitReport) -> TransmitWriter:
        """The writer of one worker. It may start threads and open files (it runs in the
        worker, not at config load); ``report`` is the transmit's ledger handle, for
        writers whose sender reports deliveries on its own (an outbox).

        :raises NotImplementedError: the transmit is config-only in this version.
        """
        raise NotImplementedError(f"transmit_type {self.tag()!r} cannot run yet")

    #: Whether :meth:`open_writer` returns a :class:`RecoverableWriter` (exactly once
    #: across crashes; the transmit then writes on one worker).
    recoverable: ClassVar[bool] = False

    def spool_bytes(self) -> int | None:
        """The disk budget, in bytes, of the transmit's spool, or None (the default) for a
        transmit whose ``write`` is quick enough to run in the dataflow (local files) or
        that keeps its own outbox. A transmit with a spool is store-and-forward: an outage
        of its endpoint holds back the other transmits only once the spool is full
        (:mod:`dataflows.spool`)."""
        return None
