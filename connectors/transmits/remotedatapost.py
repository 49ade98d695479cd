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
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
import polars as pl
import tenacity

from dataflows.backoff import ENDPOINT_BACKOFF
from dataflows.delivery import TransmitReport
from dataflows.ledger import Ledger, ledger_path
from dataflows.outbox import Entry, Outbox, start_drainer
from dataflows.records import Batch, json_values, records_frame
from dataflows.registry import transmits
from dataflows.sdk import JsonPath, RunContext, TransmitConfig, Violation, Written, describe, error

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


class PostRefused(Exception):
    """The endpoint refused the credentials (HTTP 401 or 403)."""


class PostFailed(Exception):
    """A post failed in a way worth retrying: another non-2xx, a timeout, a transport error."""


def post_payload(entries: list[Entry], fmt: Literal["bson", "json"]) -> bytes:
    """The compressed part of one post: gzip of the bodies, concatenated (BSON) or one per
    line (JSON)."""
    joiner = b"" if fmt == "bson" else b"\n"
    return gzip.compress(joiner.join(e.body for e in entries), compresslevel=6, mtime=0)


class Sender:
    """Drains an outbox to the endpoint: the sender thread's loop, usable on its own in tests.

    :param config: the transmit (credentials already taken from the environment).
    :param outbox: the outbox connection this sender (thread) owns.
    :param ledger: the ledger connection this sender (thread) owns; deliveries, errors,
        the outbox depth and pauses go through a :class:`~dataflows.delivery.TransmitReport`
        over it, as every transmit's do.
    :param sleep: waits the given seconds or until stopped; returns whether stopped.
        Tests inject their own to observe backoff without waiting.
    :param clock: monotonic seconds, for ``poll_interval``.
    """

    def __init__(self, config: RemoteDataPost, outbox: Outbox, ledger: Ledger, *,
                 stop: threading.Event | None = None, wake: threading.Event | None = None,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 client: httpx.Client | None = None) -> None:
        import httpx

        self.config = config
        self.outbox = outbox
        self.ledger = ledger
        self.report = TransmitReport(ledger, config.transmit_name, config.record_noun)
        self.stop = stop or threading.Event()
        self.wake = wake or threading.Event()
        self._sleep = sleep or self.stop.wait
        self._clock = clock
        self._client = client or httpx.Client(timeout=config.timeout)
        self._name = config.transmit_name
        self._log = logging.getLogger(f"transmit.{self._name}")
        self._last_post = -math.inf
        self.paused = False

    def resume_or_stay_paused(self) -> None:
        """At start: stay paused if paused under the same settings, else clear the pause."""
        paused_under = self.report.paused_fingerprint()
        if paused_under == self.config.fingerprint():
            self.paused = True
            self._log.error("paused: the endpoint refused these credentials before; change "
                            "base_url, API_key or API_key_ID to resume (%d records wait in the "
                            "outbox)", self.outbox.depth()[0])
        elif paused_under is not None:
            self.report.pause(None)
            self._log.info("settings changed since the endpoint refused them: resuming")

    def run(self) -> None:
        """Post until stopped."""
        self.resume_or_stay_paused()
        while not self.stop.is_set():
            if self.paused:
                self.stop.wait(1.0)
                continue
            try:
                if not self.send_once():
                    due = self._last_post + self.config.poll_interval - self._clock()
                    waiting = self.outbox.depth()[0] > 0
                    self.wake.wait(min(max(due, 0.01), 1.0) if waiting else 1.0)
                    self.wake.clear()
            except tenacity.RetryError:
                break  # stopped while retrying; the outbox keeps the records
            except Exception as exc:  # a dead sender would stall delivery silently: log, go on
                self._log.exception("sender failed; trying again in 10 s")
                self.report.failed(f"sender failed: {exc!r}")
                self.stop.wait(10.0)

    def send_once(self, force: bool = False) -> bool:
        """Post the next request if one is due (``force``: any records now).

        :returns: whether a post was made (or the transmit paused).
        :raises tenacity.RetryError: stopped while retrying a failing endpoint.
        """
        config = self.config
        entries = self.outbox.peek(config.max_request_records, config.max_request_size_bytes)
        if not entries:
            return False
        # full: as many records as a post takes, or more waiting than fit in one post
        full = len(entries) == config.max_request_records or self.outbox.depth()[0] > len(entries)
        if not (force or full or self._clock() - self._last_post >= config.poll_interval):
            return False
        try:
            self._post_with_retries(entries)
        except PostRefused as refused:
            self.paused = True
            self.report.pause(config.fingerprint())
            self.report.failed(str(refused))
            self._log.error("%s; the transmit is paused until its settings change (%d records "
                            "wait in the outbox)", refused, self.outbox.depth()[0])
            return True
        self._last_post = self._clock()
        self.outbox.delete(entries)
        per_stream: dict[str, list[Entry]] = defaultdict(list)
        for entry in entries:
            per_stream[entry.stream].append(entry)
        self.report.delivered((stream, len(part), max((e.timestamp for e in part if e.timestamp), default=None))
                              for stream, part in per_stream.items())
        self.report.drained(self.outbox)
        return True

    def _post_with_retries(self, entries: list[Entry]) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(PostFailed),
            wait=ENDPOINT_BACKOFF.wait(),
            stop=lambda _state: self.stop.is_set(),
            sleep=self._sleep,
            before_sleep=self._before_retry,
        )
        payload = post_payload(entries, self.config.format)
        retrying(self.post, payload)

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        self.report.failed(str(failure))
        self._log.warning("%s; retry %d in %.1f s (%d records wait in the outbox)", failure,
                          state.attempt_number, wait, self.outbox.depth()[0])

    def post(self, payload: bytes) -> None:
        """One ``PUT`` of a compressed payload.

        :raises PostRefused: 401 or 403.
        :raises PostFailed: any other non-2xx, a timeout, a transport error.
        """
        import httpx

        config = self.config
        url = f"{(config.base_url or '').rstrip('/')}{SSLOG_PATH}"
        headers = {"X-SM-API-Key-ID": config.API_key_ID or "", "X-SM-API-Key": config.API_key or ""}
        files = {"sslog": ("sslog.gz", payload, _MEDIA[config.format])}
        try:
            response = self._client.put(url, headers=headers, files=files)
        except httpx.TimeoutException as exc:
            raise PostFailed(f"PUT {url}: no answer within {config.timeout} s") from exc
        except httpx.TransportError as exc:
            raise PostFailed(f"PUT {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code in (401, 403):
            raise PostRefused(f"PUT {url}: HTTP {response.status_code} (credentials of "
                              f"API_key_ID {config.API_key_ID!r} refused)")
        if not response.is_success:
            raise PostFailed(f"PUT {url}: HTTP {response.status_code} {response.text[:200]!r}")

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


class _RemoteDataPostWriter:
    """Stores batches in the outbox; one sender thread per outbox drains it."""

    def __init__(self, config: RemoteDataPost, ctx: RunContext, report: TransmitReport) -> None:
        self._config = config
        self._ctx = ctx
        self._report = report
        self._name = config.transmit_name
        directory = ctx.component_dir(self._name)
        self._outbox = Outbox(directory / "outbox.sqlite")
        self._log = logging.getLogger(f"transmit.{self._name}")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock, self._thread = start_drainer(directory / "sender.lock", self._send,
                                                 f"sender-{self._name}")
        if self._thread is not None:
            self._log.info("sending to %s%s (outbox: %d records)", config.base_url, SSLOG_PATH,
                           self._outbox.depth()[0])

    def _send(self) -> None:
        sender = Sender(self._config, Outbox(self._outbox.path), Ledger(ledger_path(self._ctx.home)),
                        stop=self._stop, wake=self._wake)
        try:
            sender.run()
        finally:
            sender.close()
            sender.outbox.close()
            sender.ledger.close()

    def write(self, batches: list[Batch]) -> Written:
        now = self._ctx.now()
        rows: list[tuple[str, str | None, bytes]] = []
        for batch in batches:
            if not batch.frame.height:
                continue
            stream = str(batch.stream)
            encoded = sslogs(batch, now) if self._config.format == "bson" else json_records(batch)
            rows.extend((stream, timestamp, body) for timestamp, body in encoded)
        self._outbox.wait_for_room(sum(len(body) for _, _, body in rows), self._config.outbox_max_bytes,
                                   self._ctx.shutdown, self._log)
        self._outbox.append(rows)
        self._report.outbox(*self._outbox.depth())
        if rows:
            self._wake.set()
        return "stored"  # durably in the outbox: the receiver may act on it

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self._config.timeout + 5)
        if self._lock is not None:
            self._lock.close()
        self._outbox.close()


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
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            return [error(f"base_url {self.base_url!r} is not an http:// or https:// URL",
                          [*path, "base_url"])]
        return []

    def fingerprint(self) -> str:
        """A digest of the settings the endpoint judges (URL and credentials); a pause for
        refused credentials lasts while it stays the same."""
        text = "\0".join([self.base_url or "", self.API_key_ID or "", self.API_key or ""])
        return hashlib.sha256(text.encode()).hexdigest()

    def open_writer(self, ctx: RunContext, report: TransmitReport) -> _RemoteDataPostWriter:
        return _RemoteDataPostWriter(self, ctx, report)
