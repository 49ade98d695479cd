"""The ``remotedatapost`` transmit: records to the Sight Machine cloud (RDPv2), store-and-forward.

Implements "Transmits" and "Operation" of ``shared/specs/factorytx-digest.md``.

**Keys**: ``base_url``, ``API_key`` (secret), ``API_key_ID``, ``timeout`` (seconds per
request), ``poll_interval`` (most seconds a record waits before it is posted),
``max_request_records``, ``max_request_size_bytes`` (at most 4 MiB, counted on the encoded
sslogs before compression), ``filter_stream``; factoryflow adds ``format`` (``bson``, the
RDPv2 wire format, or ``json``) and ``outbox_max_bytes`` (the outbox's disk budget). When
``base_url`` / ``API_key`` / ``API_key_ID`` are absent (as in FactoryTX's quickstart) they
come from ``SIGHT_MACHINE_BASE_URL``, ``SIGHT_MACHINE_API_KEY`` and
``SIGHT_MACHINE_API_KEY_ID``; missing everywhere is a config error naming the transmit.
A FactoryTX transmit without ``transmit_type`` is this one.

**Wire format** (``format: bson``): ``PUT {base_url}/v1/rdp2/sslogs``, headers
``X-SM-API-Key-ID`` and ``X-SM-API-Key``, multipart field ``sslog`` (``application/bson``)
holding the gzip of the concatenated BSON sslogs. One sslog per record: ``timestamp``
(``%Y-%m-%dT%H:%M:%S.%f``, UTC), ``source`` (the asset), ``sslog_type`` (the stream type),
``fieldvalues`` ``{NAME: {"value": v}}`` with ``.`` in names replaced by ``_`` and null/NaN
values dropped, and ``counter`` when the record has a ``counter`` field. Datetime values
become text in the timestamp's format, decimals floats, dates and times ISO text.
``format: json`` posts the same way, the part (``application/x-ndjson``) holding the gzip of
the flat JSON records, one per line, as the ``kafka`` transmit writes them.

**Store-and-forward**: ``write_batch`` appends the encoded records to a durable outbox
(SQLite, WAL, ``$FACTORYFLOW_HOME/components/<transmit_name>/outbox.sqlite``) and commits
before returning; the outbox is what "delivered" means for the receiver's state and for
``delete_completed``. A sender thread drains the outbox oldest first in posts bounded by
``max_request_records`` and ``max_request_size_bytes``: a full post goes at once, a partial
one ``poll_interval`` seconds after the previous post. Records are deleted only after a
2xx. Every other answer, a timeout or a refused or dropped connection is retried with
exponential backoff and jitter (1 s doubling, capped at 30 s); 401 and 403 pause the
transmit with an error marker until its settings (``base_url``, ``API_key``, ``API_key_ID``)
change, across restarts. When the outbox holds ``outbox_max_bytes``, ``write_batch`` waits
(backpressure, the receivers stop reading) rather than drop. After a restart the sender
resumes with what the outbox holds; a crash between a 2xx and the delete resends that post
(at-least-once).

The worked example is ``RemoteDataPost.example``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
import polars as pl

from dataflows.sdk import (
    Batch,
    Entry,
    JsonPath,
    Outbox,
    OutboxSender,
    OutboxWriter,
    Refused,
    RunContext,
    SendFailed,
    TransmitConfig,
    TransmitReport,
    Violation,
    describe,
    error,
    http_url_violations,
    json_values,
    records_frame,
    transmits,
)

if TYPE_CHECKING:  # httpx loads when the transmit runs, not when the config does
    import httpx

#: ``max_request_size_bytes`` may not exceed this (the Sight Machine ingest limit).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: Where settings the config omits come from.
ENVIRONMENT = {"base_url": "SIGHT_MACHINE_BASE_URL", "API_key": "SIGHT_MACHINE_API_KEY",
               "API_key_ID": "SIGHT_MACHINE_API_KEY_ID"}
#: The sslog timestamp format (legacy FactoryTX), in polars/chrono terms: UTC, microseconds.
SSLOG_TIME = "%Y-%m-%dT%H:%M:%S%.6f"
SSLOG_PATH = "/v1/rdp2/sslogs"
_MEDIA = {"bson": "application/bson", "json": "application/x-ndjson"}


def sslogs(batch: Batch, now: datetime) -> list[tuple[str | None, bytes]]:
    """The batch's records as BSON sslogs: ``(ISO UTC timestamp with Z, encoded sslog)`` each.

    A record without a ``timestamp`` (no column, or null) is stamped ``now`` (UTC-aware).
    See the module docstring for the document's shape.
    """
    import bson

    frame = records_frame(batch, SSLOG_TIME).drop("asset", "stream_type")
    frame = frame.with_columns(pl.col(name).cast(pl.Float64)  # BSON has no Python Decimal
                               for name, dtype in frame.schema.items() if isinstance(dtype, pl.Decimal))
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    fields = [(name, name.replace(".", "_")) for name in frame.columns
              if name not in ("timestamp", "counter")]
    columns = {name: frame.get_column(name).to_list() for name in frame.columns}
    timestamps = columns.get("timestamp") or [None] * frame.height
    counters = columns.get("counter")
    values = [(out_name, columns[name]) for name, out_name in fields]
    source, sslog_type = batch.stream.asset, batch.stream.stream_type
    out = []
    for i, timestamp in enumerate(timestamps):
        timestamp = timestamp or stamp
        doc: dict[str, Any] = {
            "timestamp": timestamp, "source": source, "sslog_type": sslog_type,
            # v == v is False only for NaN
            "fieldvalues": {name: {"value": column[i]} for name, column in values
                            if column[i] is not None and column[i] == column[i]}}
        if counters is not None and counters[i] is not None:
            doc["counter"] = counters[i]
        out.append((f"{timestamp}Z", bson.encode(doc)))
    return out


def json_records(batch: Batch) -> list[tuple[str | None, bytes]]:
    """The batch's flat JSON records (as the ``kafka`` transmit writes them), each with its
    ``timestamp`` text (or None)."""
    records = records_frame(batch)
    stamps = (records.get_column("timestamp").to_list() if "timestamp" in records.columns
              else [None] * records.height)
    return list(zip(stamps, json_values(records), strict=True))


def post_payload(entries: list[Entry], fmt: Literal["bson", "json"]) -> bytes:
    """The compressed part of one post: gzip of the bodies, concatenated (BSON) or one per
    line (JSON)."""
    joiner = b"" if fmt == "bson" else b"\n"
    return gzip.compress(joiner.join(e.body for e in entries), compresslevel=6, mtime=0)


class Sender(OutboxSender):
    """Drains an outbox to the Sight Machine endpoint (the loop is
    :class:`~dataflows.sdk.OutboxSender`'s): posts of up to ``max_request_records`` and
    ``max_request_size_bytes``, a partial one ``poll_interval`` seconds after the previous.

    :param config: the transmit (credentials already taken from the environment).
    :param outbox: the outbox connection this sender (thread) owns.
    :param report: the transmit's ledger handle this sender (thread) owns.
    :param sleep: waits the given seconds or until stopped; tests inject their own.
    :param clock: monotonic seconds, for ``poll_interval``.
    """

    def __init__(self, config: RemoteDataPost, outbox: Outbox, report: TransmitReport, *,
                 stop: threading.Event | None = None, wake: threading.Event | None = None,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 client: httpx.Client | None = None) -> None:
        import httpx

        super().__init__(outbox, report, config.fingerprint(),
                         "base_url, API_key or API_key_ID", max_records=config.max_request_records,
                         max_bytes=config.max_request_size_bytes, stop=stop, wake=wake, sleep=sleep,
                         clock=clock)
        self.config = config
        self._client = client or httpx.Client(timeout=config.timeout)
        self._last_post = -math.inf

    def due(self, entries: list[Entry]) -> bool:
        return self._clock() - self._last_post >= self.config.poll_interval

    def wait_seconds(self) -> float:
        due = self._last_post + self.config.poll_interval - self._clock()
        return min(max(due, 0.01), 1.0) if self.outbox.depth()[0] > 0 else 1.0

    def send(self, entries: list[Entry]) -> None:
        self.post(post_payload(entries, self.config.format))
        self._last_post = self._clock()

    def post(self, payload: bytes) -> None:
        """One ``PUT`` of a compressed payload.

        :raises Refused: 401 or 403.
        :raises SendFailed: any other non-2xx, a timeout, a transport error.
        """
        import httpx

        config = self.config
        url = f"{(config.base_url or '').rstrip('/')}{SSLOG_PATH}"
        headers = {"X-SM-API-Key-ID": config.API_key_ID or "", "X-SM-API-Key": config.API_key or ""}
        files = {"sslog": ("sslog.gz", payload, _MEDIA[config.format])}
        try:
            response = self._client.put(url, headers=headers, files=files)
        except httpx.TimeoutException as exc:
            raise SendFailed(f"PUT {url}: no answer within {config.timeout} s") from exc
        except httpx.TransportError as exc:
            raise SendFailed(f"PUT {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code in (401, 403):
            raise Refused(f"PUT {url}: HTTP {response.status_code} (credentials of "
                          f"API_key_ID {config.API_key_ID!r} refused)")
        if not response.is_success:
            raise SendFailed(f"PUT {url}: HTTP {response.status_code} {response.text[:200]!r}")

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


@transmits.register
class RemoteDataPost(TransmitConfig, tag="remotedatapost", kw_only=True):
    """Posts records to the Sight Machine cloud (RDPv2) through a durable outbox."""

    title: ClassVar[str] = "Sight Machine (remotedatapost)"
    record_noun: ClassVar[str] = "sslogs"
    template: ClassVar[dict[str, Any]] = {
        "transmit_name": "transmit_0",
        "base_url": "https://<tenant name>.sightmachine.io",
        "API_key_ID": "<Please input your API key ID>",
        "API_key": "<Please input your API key>",
    }
    example: ClassVar[dict[str, Any]] = {
        "transmit_name": "sight_machine", "transmit_type": "remotedatapost",
        "base_url": "https://plant.sightmachine.io", "API_key_ID": "factory-edge",
        "API_key": "${SM_API_KEY}", "poll_interval": 5}

    base_url: Annotated[
        str | None, describe("Sight Machine tenant URL; default $SIGHT_MACHINE_BASE_URL.")] = None
    API_key: Annotated[
        str | None, describe("Edge API key; default $SIGHT_MACHINE_API_KEY.", secret=True)] = None
    API_key_ID: Annotated[
        str | None, describe("Edge API key id; default $SIGHT_MACHINE_API_KEY_ID.")] = None
    timeout: Annotated[float, describe("Request timeout in seconds.", gt=0)] = 120.0
    poll_interval: Annotated[float, describe("Most seconds a record waits before it is posted.",
                                             ge=0)] = 30.0
    max_request_records: Annotated[int, describe("Records per post.", ge=1)] = 2000
    max_request_size_bytes: Annotated[
        int, describe("Bytes of encoded sslogs per post, before compression.", ge=1,
                      le=MAX_REQUEST_BYTES)] = MAX_REQUEST_BYTES
    format: Annotated[Literal["bson", "json"], describe(
        "Wire format: 'bson' (RDPv2 sslogs) or 'json' (flat records).")] = "bson"
    outbox_max_bytes: Annotated[int, describe(
        "Disk budget of the outbox in bytes; when full, the dataflow waits.",
        ge=MAX_REQUEST_BYTES)] = 1024 ** 3

    def from_environment(self, environ: Mapping[str, str],
                         path: JsonPath) -> tuple[RemoteDataPost, list[Violation]]:
        filled: dict[str, str] = {}
        missing = []
        for key, variable in ENVIRONMENT.items():
            if getattr(self, key):
                continue
            if environ.get(variable):
                filled[key] = environ[variable]
            else:
                missing.append(error(f"transmit {self.transmit_name!r} has no {key}: set it in the "
                                     f"config or in the environment variable {variable}",
                                     [*path, key]))
        return msgspec.structs.replace(self, **filled), missing

    def violations(self, path: JsonPath) -> list[Violation]:
        return http_url_violations("base_url", self.base_url, path)

    def fingerprint(self) -> str:
        """A digest of the settings the endpoint judges (URL and credentials); a pause for
        refused credentials lasts while it stays the same."""
        text = "\0".join([self.base_url or "", self.API_key_ID or "", self.API_key or ""])
        return hashlib.sha256(text.encode()).hexdigest()

    def open_writer(self, ctx: RunContext, report: TransmitReport) -> OutboxWriter:
        def encode(batch: Batch) -> list[tuple[str | None, bytes]]:
            return sslogs(batch, ctx.now()) if self.format == "bson" else json_records(batch)

        def sender(outbox: Outbox, own: TransmitReport, stop: threading.Event, wake: threading.Event) -> Sender:
            return Sender(self, outbox, own, stop=stop, wake=wake)

        return OutboxWriter(self.transmit_name, ctx, report, encode, sender, self.outbox_max_bytes,
                            self.timeout + 5, f"{self.base_url}{SSLOG_PATH}")
