"""The ``authentise_capture`` transmit: printer captures to Authentise 3DIAX, store-and-forward.

Implements the upload of ``shared/specs/authentise-3diax-capture-api.txt`` (its sample
script's steps 1 and 4): log in (``POST {users_url}`` with ``username`` and ``password``;
the session is a cookie), create a capture for the ``modeler`` and ``capture_type``
(``POST {data_url}capture/`` with their URIs; the answer's ``Location`` is the capture and
``X-Upload-Location`` where its file goes), then ``PUT`` the gzip-compressed file there
with ``Content-Type: application/x-gzip``.

**What a capture is**: each record is one capture. A record with a ``path_field``
(``stored_path`` by default: what the ``attachment`` parser gives) uploads that file's
bytes as they are, so a directory of status logs read by a file receiver goes up
unchanged. Any other record is written as a ``catex.modeler.status`` capture: fields
``<section>.<key>`` (as the ``catex_modeler_status`` parser names them) into their
section, ``<section>.<n>.<key>`` into the n-th group of the section, other fields into
``general``; strings quoted, numbers bare, nulls left out.

**Keys**: ``users_url`` (``https://users.authentise.com/sessions/``), ``data_url``
(``https://data.authentise.com/``), ``username``, ``password`` (secret), ``modeler`` (the
modeler's URI), ``capture_type`` (a URI, or a name such as ``catex.modeler.status``, looked
up among ``GET {data_url}capture-type/`` for the modeler's type), ``timeout`` (seconds per
request), ``path_field``, ``outbox_max_bytes``.

**Store-and-forward**: ``write_batch`` stores each capture, gzip-compressed, in a durable
outbox (``$FACTORYFLOW_HOME/components/<transmit_name>/outbox.sqlite``) and returns; a
sender thread uploads them oldest first, one capture at a time, and deletes each only
after its ``PUT`` was answered 2xx. Timeouts, transport errors, 5xx and other refusals
are retried with backoff (1 s doubling, capped); a failed ``PUT`` is retried to the same
upload location, a ``401`` on a data call logs in again, and a ``4xx`` from the upload
location creates a new capture. ``401``/``403`` at login pause the transmit with an error
marker until its settings change. A crash between an upload and its delete uploads that
capture again at restart (at-least-once); a crash between creating a capture and its
upload leaves that capture empty on the Authentise side.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import polars as pl

from dataflows.sdk import (
    Batch,
    Entry,
    JsonPath,
    NonEmptyStr,
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
    http_url_violations,
    records_frame,
    transmits,
)

if TYPE_CHECKING:  # httpx loads when the transmit runs, not when the config does
    import httpx

_SPECIAL = str.maketrans({"\\": "\\\\", '"': '\\"', "$": "\\$", "[": "\\[", "]": "\\]", "\n": "\\n"})


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime | date):
        value = value.isoformat()
    elif not isinstance(value, str):
        value = json.dumps(value, default=str)
    return f'"{value.translate(_SPECIAL)}"'


def render_capture(record: dict[str, Any]) -> str:
    """A record as a ``catex.modeler.status`` capture (see the module docstring); ``timestamp``
    is left out when the record has ``general.serverTime``."""
    sections: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[int, dict[str, Any]]] = {}
    for name, value in record.items():
        if value is None or (name == "timestamp" and "general.serverTime" in record):
            continue
        parts = name.split(".")
        if len(parts) == 1:
            sections.setdefault("general", {})[name] = value
        elif len(parts) == 3 and parts[1].isdigit():
            sections.setdefault(parts[0], {})
            groups.setdefault(parts[0], {}).setdefault(int(parts[1]), {})[parts[2]] = value
        else:
            sections.setdefault(parts[0], {})[".".join(parts[1:])] = value
    lines = []
    for section, options in sections.items():
        lines.append(f"set machineStatus({section}) {{")
        for group in sorted(groups.get(section, {})):
            lines.append("        {")
            lines.extend(f"        -{key} {_value(v)}" for key, v in groups[section][group].items())
            lines.append("        }")
        lines.extend(f"        -{key} {_value(v)}" for key, v in options.items())
        lines.append("};")
    return "\n".join(lines) + "\n"


@transmits.register
class AuthentiseCapture(TransmitConfig, tag="authentise_capture", kw_only=True):
    """Uploads printer captures to Authentise 3DIAX through a durable outbox."""

    title: ClassVar[str] = "Authentise 3DIAX capture"
    record_noun: ClassVar[str] = "captures"
    template: ClassVar[dict[str, Any]] = {
        "transmit_name": "authentise", "transmit_type": "authentise_capture",
        "username": "<Please input your Authentise username>",
        "password": "<Please input your Authentise password>",
        "modeler": "<Please input the modeler's URI (https://data.authentise.com/modeler/<id>/)>",
        "capture_type": "catex.modeler.status"}
    example: ClassVar[dict[str, Any]] = {
        "transmit_name": "authentise", "transmit_type": "authentise_capture",
        "username": "engineering@plant.example",
        "password": "${AUTHENTISE_PASSWORD}",
        "modeler": "https://data.authentise.com/modeler/3d9c3c5e-2b3a-4f0e-9d55-1c9a4b7e2f10/",
        "capture_type": "catex.modeler.status"}

    users_url: Annotated[NonEmptyStr, describe("The sessions endpoint to log in at.")] = \
        "https://users.authentise.com/sessions/"
    data_url: Annotated[NonEmptyStr, describe("The data API's base URL.")] = "https://data.authentise.com/"
    username: Annotated[NonEmptyStr, describe("Authentise user.")]
    password: Annotated[NonEmptyStr, describe("The user's password.", secret=True)]
    modeler: Annotated[NonEmptyStr, describe("URI of the modeler (printer) the captures belong to.")]
    capture_type: Annotated[NonEmptyStr, describe(
        "Capture type: a URI, or a name such as catex.modeler.status.")] = "catex.modeler.status"
    timeout: Annotated[float, describe("Seconds per request.", gt=0)] = 60.0
    path_field: Annotated[NonEmptyStr, describe(
        "Field holding the path of a capture file to upload as it is.")] = "stored_path"
    outbox_max_bytes: Annotated[int, describe(
        "Disk budget of the outbox in bytes; when full, the dataflow waits.", ge=1024 * 1024)] = 1024 ** 3

    def violations(self, path: JsonPath) -> list[Violation]:
        return [v for key in ("users_url", "data_url", "modeler")
                for v in http_url_violations(key, getattr(self, key), path)]

    def fingerprint(self) -> str:
        """A digest of the settings Authentise judges; a pause for refused credentials lasts
        while it stays the same."""
        text = "\0".join([self.users_url, self.data_url, self.username, self.password, self.modeler,
                          self.capture_type])
        return hashlib.sha256(text.encode()).hexdigest()

    def open_writer(self, ctx: RunContext, report: TransmitReport) -> OutboxWriter:
        def encode(batch: Batch) -> list[tuple[str | None, bytes]]:
            return self.captures(batch, report)

        def sender(outbox: Outbox, own: TransmitReport, stop: threading.Event,
                   wake: threading.Event) -> CaptureSender:
            return CaptureSender(self, outbox, own, stop=stop, wake=wake)

        return OutboxWriter(self.transmit_name, ctx, report, encode, sender, self.outbox_max_bytes,
                            self.timeout + 5, f"{self.data_url}capture/ for {self.modeler}")

    def captures(self, batch: Batch, report: TransmitReport | None = None) -> list[tuple[str | None, bytes]]:
        """``(timestamp text or None, gzip of the capture)`` per record of ``batch``. A record
        whose capture file cannot be read is left out, logged and recorded as the transmit's
        last error (the file is gone: retrying cannot bring it back)."""
        frame = batch.frame
        stamps: list[str | None] = [None] * frame.height
        if "timestamp" in frame.columns and isinstance(frame.schema["timestamp"], pl.Datetime):
            stamps = records_frame(batch.with_frame(frame.select("timestamp")))["timestamp"].to_list()
        out = []
        for stamp, record in zip(stamps, frame.iter_rows(named=True), strict=True):
            stored = record.get(self.path_field)
            if stored is not None:
                try:
                    content = Path(stored).read_bytes()
                except OSError as exc:
                    message = f"{batch.stream}: capture file {stored} cannot be read ({exc}): not uploaded"
                    if report is not None:
                        report.log.error("%s", message)
                        report.failed(message)
                    continue
            else:
                content = render_capture(record).encode()
            out.append((stamp, gzip.compress(content, compresslevel=6, mtime=0)))
        return out


class CaptureSender(OutboxSender):
    """Uploads the outbox's captures one at a time (the loop is
    :class:`~dataflows.sdk.OutboxSender`'s; see the module docstring for the calls)."""

    def __init__(self, config: AuthentiseCapture, outbox: Outbox, report: TransmitReport, *,
                 stop: threading.Event | None = None, wake: threading.Event | None = None,
                 client: httpx.Client | None = None) -> None:
        import httpx

        super().__init__(outbox, report, config.fingerprint(),
                         "users_url, username, password, modeler or capture_type", max_records=1,
                         stop=stop, wake=wake)
        self.config = config
        self._client = client or httpx.Client(timeout=config.timeout, headers={"Accept": "application/json"})
        self._logged_in = False
        self._capture_type: str | None = None
        self._pending: dict[int, tuple[str, str]] = {}  # outbox id -> (capture URI, upload location)

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            return self._client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise SendFailed(f"{method} {url}: no answer within {self.config.timeout} s") from exc
        except httpx.TransportError as exc:
            raise SendFailed(f"{method} {url}: {type(exc).__name__}: {exc or 'connection failed'}") from exc

    @staticmethod
    def _why(response: httpx.Response) -> str:
        try:
            errors = response.json().get("errors") or []
            return "; ".join(f"{e.get('code')}: {e.get('title')}" for e in errors) or response.text[:200]
        except (ValueError, AttributeError):
            return response.text[:200]

    def _data(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A data call; a 401 ends the session (the next try logs in again)."""
        response = self._call(method, url, **kwargs)
        if response.status_code == 401:
            self._logged_in = False
            raise SendFailed(f"{method} {url}: HTTP 401 ({self._why(response)}): logging in again")
        if not response.is_success:
            raise SendFailed(f"{method} {url}: HTTP {response.status_code} {self._why(response)}")
        return response

    def login(self) -> None:
        """Open a session.

        :raises Refused: the credentials were refused (401, 403).
        :raises SendFailed: anything else.
        """
        url = self.config.users_url
        response = self._call("POST", url, json={"username": self.config.username,
                                                 "password": self.config.password})
        if response.status_code in (401, 403):
            raise Refused(f"POST {url}: HTTP {response.status_code} ({self._why(response)}): the "
                          f"credentials of {self.config.username!r} were refused")
        if not response.is_success:
            raise SendFailed(f"POST {url}: HTTP {response.status_code} {self._why(response)}")
        self._logged_in = True
        self.log.info("logged in to %s as %s", url, self.config.username)

    def capture_type(self) -> str:
        """The capture type's URI (a name is looked up for the modeler's type once).

        :raises Refused: no capture type of that name for the modeler's type: the settings
            must change.
        """
        if self._capture_type is None:
            wanted = self.config.capture_type
            if wanted.startswith(("http://", "https://")):
                self._capture_type = wanted
            else:
                modeler_type = self._data("GET", self.config.modeler).json().get("type")
                listed = self._data("GET", f"{self.config.data_url}capture-type/").json().get("resources", [])
                found = [c["uri"] for c in listed
                         if c.get("capture_type") == wanted and c.get("modeler_type") == modeler_type]
                if not found:
                    raise Refused(f"no capture type {wanted!r} for the modeler's type {modeler_type}")
                self._capture_type = found[0]
        return self._capture_type

    def send(self, entries: list[Entry]) -> None:
        (entry,) = entries
        if not self._logged_in:
            self.login()
        pending = self._pending.get(entry.id)
        if pending is None:
            response = self._data("POST", f"{self.config.data_url}capture/",
                                  json={"modeler": self.config.modeler, "capture_type": self.capture_type()})
            capture, upload = response.headers.get("Location"), response.headers.get("X-Upload-Location")
            if not capture or not upload:
                raise SendFailed(f"POST {self.config.data_url}capture/: the answer has no Location or "
                                 "X-Upload-Location header")
            pending = self._pending[entry.id] = (capture, upload)
        capture, upload = pending
        response = self._call("PUT", upload, content=entry.body,
                              headers={"Content-Type": "application/x-gzip"})
        if 400 <= response.status_code < 500:  # the upload location is no good: a new capture
            del self._pending[entry.id]
            raise SendFailed(f"PUT {upload}: HTTP {response.status_code} {self._why(response)}: "
                             "creating a new capture")
        if not response.is_success:
            raise SendFailed(f"PUT {upload}: HTTP {response.status_code} {self._why(response)}")
        del self._pending[entry.id]
        self.log.debug("capture %s uploaded (%d bytes gzip)", capture, len(entry.body))

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()
