"""The ``factoryio`` receiver: the tags of a Factory I/O scene, polled over its web API.

Implements a client of ``shared/specs/factoryio-web-api.txt`` (Factory I/O Ultimate's web
server, ``app.web_server = True``; port 7410 by default).

**Keys**: ``host``, ``port`` (7410), ``timeout`` (seconds per request), ``poll_interval``;
each stream picks tags by ``names`` (the API's ``*`` and ``?`` wildcards,
case-insensitive), ``ids``, ``kind`` (``input`` | ``output``) and ``type`` (``bit`` |
``int`` | ``float``); ``kind`` and ``type`` narrow what ``names`` and ``ids`` pick; a stream with neither
``names`` nor ``ids`` takes every tag of its ``kind`` and ``type``. ``on_change`` sends a
record only when a value changed since the last one.

**Reading**: the stream resolves its tags once (``GET /api/tags?name=...&kind=...&type=...``
per name pattern, ``GET /api/tags/{id}`` per id), then each poll reads every value in one
request (``GET /api/tag/values`` with the ids as the JSON body) and makes one record:
``timestamp`` (the poll time, UTC) and each tag under its name, typed by the tag's type
(bit: Boolean, int: Int64, float: Float64). Factory I/O allows duplicate names (the same
sensor as input and output, two scales both called ``Weight``): a name that more than one
of the stream's tags carry becomes ``<name> [<kind> <address>]`` for each of them, e.g.
``Weight [input 0]`` and ``Weight [input 1]``.

**Errors**: a tag answered with an error (``{"id", "code", "error"}``) is null in the
record and marks the stream with its code and message; the other tags go on. A ``404``
for an id means the scene changed: the stream resolves its tags again and reads once
more. An unreachable server, a timeout or a non-2xx answer fails the poll: the runtime
marks the stream and retries with backoff.

**State**: with ``on_change``, the last values sent (so a restart does not send an
unchanged record again); otherwise none (live values are not replayed).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec
import polars as pl

from dataflows.sdk import (
    Batch,
    NonEmptyStr,
    Port,
    ReceiverConfig,
    RunContext,
    StreamConfig,
    StreamReader,
    Template,
    describe,
    receivers,
)

if TYPE_CHECKING:  # httpx loads when a stream runs, not when the config does
    import httpx

KINDS = ("input", "output")
TYPES = ("bit", "int", "float")
_DTYPES: dict[str, Any] = {"bit": pl.Boolean, "int": pl.Int64, "float": pl.Float64}


class FactoryIoError(Exception):
    """The web server could not be reached or refused a request (retried with backoff)."""


class FactoryIoStream(StreamConfig, kw_only=True):
    """Tags of the scene read together, one record per poll."""

    names: Annotated[list[NonEmptyStr], describe(
        "Tag names; '*' and '?' are wildcards, case-insensitive.")] = msgspec.field(default_factory=list)
    ids: Annotated[list[NonEmptyStr], describe("Tag ids.")] = msgspec.field(default_factory=list)
    kind: Annotated[str | None, describe("Only tags of this kind (controller's view).",
                                         choices=KINDS)] = None
    type: Annotated[str | None, describe("Only tags of this data type.", choices=TYPES)] = None
    on_change: Annotated[bool, describe(
        "Send a record only when a value changed since the last one.")] = False


class _Tag(msgspec.Struct, frozen=True):
    id: str
    name: str
    address: int
    type: str  # bit | int | float
    kind: str  # input | output


@receivers.register
class FactoryIoReceiver(ReceiverConfig[FactoryIoStream, None], tag="factoryio", kw_only=True):
    """Polls the tags of a Factory I/O scene through its web API."""

    title: ClassVar[str] = "Factory I/O"
    template: ClassVar[Template] = Template(
        "Factory I/O", "A template for reading the tags of a Factory I/O scene", {
            "data_receiver_name": "receiver_0", "protocol": "factoryio", "poll_interval": 1,
            "host": "<Please input the hostname or IP address of the Factory I/O PC>",
            "port": 7410, "timeout": 5,
            "streams": [{"asset": "<Please input the asset name (e.g. sorting_station)>",
                         "stream_type": "tags", "names": ["*"], "kind": "input"}]})
    example: ClassVar[dict[str, Any]] = {
        "data_receiver_name": "factory_io", "protocol": "factoryio", "poll_interval": 1,
        "host": "127.0.0.1", "port": 7410, "timeout": 5,
        "streams": [
            {"asset": "sorter", "stream_type": "sensors", "names": ["At *", "Weight", "Pieces*"],
             "kind": "input"},
            {"asset": "sorter", "stream_type": "actuators", "kind": "output", "type": "bit",
             "on_change": True}]}

    host: Annotated[NonEmptyStr, describe("Hostname or IP address of the PC running Factory I/O.")]
    port: Annotated[Port, describe("Port of Factory I/O's web server.")] = 7410
    timeout: Annotated[float, describe("Seconds to wait for an answer.", gt=0)] = 5.0
    streams: Annotated[list[FactoryIoStream], describe("Tags to read.", min_length=1)]

    @property
    def base_url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def open_stream(self, stream: FactoryIoStream, resume_state: Any, ctx: RunContext,
                    worker: None) -> _FactoryIoReader:
        return _FactoryIoReader(self, stream, ctx, resume_state)


def field_names(tags: list[_Tag]) -> dict[str, str]:
    """The record field of each tag id: its name, or ``<name> [<kind> <address>]`` for a name
    that several of ``tags`` carry (then ``#<n>`` after it, should kind and address repeat too)."""
    counts: dict[str, int] = {}
    for t in tags:
        counts[t.name] = counts.get(t.name, 0) + 1
    out: dict[str, str] = {}
    used: set[str] = set()
    for t in tags:
        name = t.name if counts[t.name] == 1 else f"{t.name} [{t.kind} {t.address}]"
        unique, n = name, 1
        while unique in used:
            n += 1
            unique = f"{name} #{n}"
        used.add(unique)
        out[t.id] = unique
    return out


class _FactoryIoReader(StreamReader):
    marker_category = "factoryio"
    failure_text = "Factory I/O read failed"
    retryable = (FactoryIoError,)

    def __init__(self, receiver: FactoryIoReceiver, stream: FactoryIoStream, ctx: RunContext,
                 state: Any) -> None:
        self._receiver = receiver
        self._stream = stream
        self._ctx = ctx
        self._client: httpx.Client | None = None
        self._tags: list[_Tag] | None = None
        self._fields: dict[str, str] = {}
        self._last: dict[str, Any] | None = state.get("last") if isinstance(state, dict) else None

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        import httpx

        if self._client is None:
            self._client = httpx.Client(base_url=self._receiver.base_url,
                                        timeout=self._receiver.timeout)
        url = f"{self._receiver.base_url}{path}"
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise FactoryIoError(f"{method} {url}: no answer within {self._receiver.timeout} s") from exc
        except httpx.TransportError as exc:
            raise FactoryIoError(f"{method} {url}: {type(exc).__name__}: {exc or 'connection failed'}") \
                from exc
        try:
            body = response.json()
        except ValueError:
            body = response.text[:200]
        if response.status_code == 404:
            return 404, body
        if not response.is_success:
            message = body.get("error") if isinstance(body, dict) else body
            raise FactoryIoError(f"{method} {url}: HTTP {response.status_code} {message!r}")
        return response.status_code, body

    def _resolve(self) -> None:
        """The stream's tags, from the scene as it is now."""
        stream = self._stream
        found: dict[str, _Tag] = {}
        filters = {k: v for k, v in (("kind", stream.kind), ("type", stream.type)) if v}
        patterns = stream.names or ([] if stream.ids else [None])
        for pattern in patterns:
            params = {**filters, **({"name": pattern} if pattern is not None else {})}
            _, tags = self._request("GET", "/api/tags", params=params)
            if not tags and pattern is not None:
                self.report_warning(f"names pattern {pattern!r} matches no tag of the scene"
                                    + (f" ({', '.join(f'{k} {v}' for k, v in filters.items())})"
                                       if filters else ""))
            for item in tags:
                found.setdefault(item["id"], self._tag(item))
        for tag_id in stream.ids:
            status, item = self._request("GET", f"/api/tags/{tag_id}")
            if status == 404:
                self.report_bad_input(f"tag id {tag_id!r} is not in the scene")
                continue
            tag = self._tag(item)
            if (stream.kind or tag.kind) != tag.kind or (stream.type or tag.type) != tag.type:
                self.report_warning(f"tag id {tag_id!r} ({tag.name!r}) is a {tag.kind} {tag.type} tag, "
                                    f"not {stream.kind or ''} {stream.type or ''}: left out")
                continue
            found.setdefault(tag.id, tag)
        self._tags = list(found.values())
        self._fields = field_names(self._tags)

    @staticmethod
    def _tag(item: dict[str, Any]) -> _Tag:
        return _Tag(str(item["id"]), str(item["name"]), int(item["address"]),
                    str(item["type"]).lower(), str(item["kind"]).lower())

    def _values(self) -> list[dict[str, Any]]:
        assert self._tags is not None
        _, answer = self._request("GET", "/api/tag/values", json=[t.id for t in self._tags])
        if not isinstance(answer, list):
            raise FactoryIoError(f"GET /api/tag/values answered {answer!r}, not a list")
        return answer

    # ------------------------------------------------------------------ reading

    def read(self) -> tuple[list[Batch], bool]:
        if self._tags is None:
            self._resolve()
        assert self._tags is not None
        if not self._tags:  # nothing in the scene matches (yet): look again at the next poll
            self._tags = None
            return [], False
        now = self._ctx.now()
        answer = self._values()
        if any(item.get("code") == 404 for item in answer):
            gone = [item.get("id") for item in answer if item.get("code") == 404]
            self.report_warning(f"{len(gone)} tag ids are no longer in the scene ({', '.join(map(str, gone))}): "
                                "the scene changed, tags resolved again")
            self._resolve()
            answer = self._values()
        record = self._record(answer, now)
        if record is None:
            return [], False
        frame = pl.DataFrame([record], schema={"timestamp": pl.Datetime("us", "UTC"), **{
            self._fields[t.id]: _DTYPES[t.type] for t in self._tags}}, orient="row")
        source = f"{self._receiver.base_url}/api/tag/values"
        return [Batch(self._receiver.data_receiver_name, self._stream.key, frame, source)], False

    def _record(self, answer: list[dict[str, Any]], now: datetime) -> dict[str, Any] | None:
        """The poll's record, or None when ``on_change`` and nothing changed."""
        assert self._tags is not None
        by_id = {str(item.get("id")): item for item in answer}
        values: dict[str, Any] = {}
        for t in self._tags:
            field = self._fields[t.id]
            item = by_id.get(t.id)
            if item is None:
                self.report_bad_input(f"tag {field!r} (id {t.id}) is missing from the answer")
                values[field] = None
            elif "error" in item or "code" in item:
                self.report_bad_input(f"tag {field!r} (id {t.id}): {item.get('code')} {item.get('error')}")
                values[field] = None
            else:
                values[field] = self._typed(t, field, item.get("value"))
        if self._stream.on_change:
            if values == self._last:
                return None
            self._last = values
        return {"timestamp": now, **values}

    def _typed(self, tag: _Tag, field: str, value: Any) -> Any:
        ok = {"bit": isinstance(value, bool),
              "int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, int | float) and not isinstance(value, bool)}.get(tag.type, False)
        if not ok:
            self.report_bad_input(f"tag {field!r} (id {tag.id}) of type {tag.type} has the value "
                                  f"{value!r}: sent as null")
            return None
        return float(value) if tag.type == "float" else value

    def snapshot(self) -> dict[str, Any] | None:
        return {"last": self._last} if self._stream.on_change else None

    def describe(self) -> str:
        tags = "tags not resolved yet" if self._tags is None else f"{len(self._tags)} tags"
        return f"{tags} on {self._receiver.base_url}"

    def abandon(self) -> None:
        self._tags = None  # resolve again after a failure: the scene may have changed

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
