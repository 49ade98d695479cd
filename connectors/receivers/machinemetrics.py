"""The ``machinemetrics`` receiver: MachineMetrics production, downtime and quality rollups,
pulled window by window.

Implements a client of ``shared/specs/machinemetrics-rest-api.txt`` ("Get Production /
Downtime / Quality Query Results"), at ``POST {base_url}/reports/{query}`` with
``Authorization: Bearer {api_key}``.

**Keys**: ``base_url`` (``https://api.machinemetrics.com``), ``api_key`` (secret),
``timeout`` (seconds per request), ``poll_interval``; each stream has ``query``
(``production`` | ``downtime`` | ``quality``), ``metrics`` (production's ``data``, e.g.
``totalParts``), ``group_by`` (e.g. ``["machine"]``, ``["reason", "machine"]``), ``filter``
(e.g. ``{"machine": [ids]}``), ``window`` (seconds), ``initial_value`` (the first window's
start, ISO 8601, whole seconds; default: the start of the window the first run falls in) and ``delay``
(seconds a window is left to settle after its end before it is asked for).

**Windows**: windows are ``[initial_value + k * window, initial_value + (k + 1) * window)``.
The stream's state is the end of the last window delivered. A read asks for the next
window once it has fully elapsed (its end plus ``delay`` is past), one request per window;
a backlog (a first run from an old ``initial_value``, a restart after a stop) is read
window by window without waiting for the next poll. The state moves only with the batch
of its window, so across a crash no window is asked for twice after its delivery and
none is skipped.

**Rows**: the nested answer is flattened into one row per innermost group: ``timestamp``
(the row's period start: its innermost time group's ``start``, else the window's start),
``start`` and ``end`` (the window, UTC), for each group the entity's name under the
group's name and its id under ``<group>_id`` (``machine: "MACHINE 1"``, ``machine_id``;
``reason: "Part Changeover"``, ``reason_id``), a time group's ``start``, ``end`` and
``shopDate`` as ``<group>_start`` and so on, then the aggregates (``totalParts``,
``downtimeMs``, ``rejectCount``, ...) as fields. With no ``group_by``, one row holds the
window's totals.

**Errors**: 401, 403, 404, 429, any other non-2xx, a timeout or an unreachable server fail
the read with the status and the answer's ``error`` and ``error_description``; the runtime
marks the stream with that message and retries with backoff (1 s doubling), so 429 and
5xx back off and the state stays where it was.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec
import polars as pl

from dataflows.sdk import (
    Batch,
    JsonPath,
    NonEmptyStr,
    Position,
    ReceiverConfig,
    RunContext,
    StreamConfig,
    StreamReader,
    Template,
    Violation,
    describe,
    error,
    http_url_violations,
    is_placeholder,
    receivers,
)

if TYPE_CHECKING:  # httpx loads when a stream runs, not when the config does
    import httpx

QUERIES = ("production", "downtime", "quality")
_TIME_KEYS = ("start", "end", "shopDate")


class MachineMetricsError(Exception):
    """A query failed: not answered, or answered with an error (retried with backoff)."""


def parse_time(text: str) -> datetime:
    """An ISO 8601 date-time as UTC-aware; a naive one is taken as UTC.

    :raises ValueError: not a date-time.
    """
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    """``2017-07-19T10:00:00Z``: how the receiver writes times into queries and state."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class MachineMetricsStream(StreamConfig, kw_only=True):
    """One rollup query, asked window by window."""

    query: Annotated[str, describe("Which report.", choices=QUERIES)]
    metrics: Annotated[list[NonEmptyStr], describe(
        "Production metrics (the query's data), e.g. totalParts, timeInCycle.")] = msgspec.field(
        default_factory=list)
    group_by: Annotated[list[NonEmptyStr], describe(
        "Groups, outermost first, e.g. ['reason', 'machine'].")] = msgspec.field(default_factory=list)
    filter: Annotated[dict[str, list[str]], describe(
        "Ids to keep per item, e.g. {'machine': [...]}.")] = msgspec.field(default_factory=dict)
    window: Annotated[int, describe("Seconds per window (one request each).", ge=1)] = 3600
    initial_value: Annotated[str | None, describe(
        "Start of the first window, ISO 8601 (UTC if no offset); default: the current window's.")] = None
    delay: Annotated[float, describe(
        "Seconds after a window's end before it is asked for (late data).", ge=0)] = 0.0


@receivers.register
class MachineMetricsReceiver(ReceiverConfig[MachineMetricsStream, None], tag="machinemetrics", kw_only=True):
    """Pulls MachineMetrics production, downtime and quality rollups, window by window."""

    title: ClassVar[str] = "MachineMetrics"
    template: ClassVar[Template] = Template(
        "MachineMetrics", "A template for pulling KPI rollups from MachineMetrics", {
            "data_receiver_name": "receiver_0", "protocol": "machinemetrics", "poll_interval": 60,
            "base_url": "https://api.machinemetrics.com",
            "api_key": "<Please input your MachineMetrics API key>",
            "streams": [{"asset": "<Please input the asset name (e.g. cnc_cell)>",
                         "stream_type": "production", "query": "production",
                         "metrics": ["totalParts", "timeInCycle"], "group_by": ["machine"],
                         "window": 3600}]})
    example: ClassVar[dict[str, Any]] = {
        "data_receiver_name": "machinemetrics", "protocol": "machinemetrics", "poll_interval": 60,
        "base_url": "https://api.machinemetrics.com", "api_key": "${MACHINEMETRICS_API_KEY}",
        "streams": [
            {"asset": "cnc_cell", "stream_type": "production", "query": "production",
             "metrics": ["totalParts", "timeInCycle"], "group_by": ["machine"], "window": 3600,
             "initial_value": "2026-01-01T00:00:00Z", "delay": 300},
            {"asset": "cnc_cell", "stream_type": "downtime", "query": "downtime",
             "group_by": ["reason", "machine"], "window": 3600,
             "initial_value": "2026-01-01T00:00:00Z", "delay": 300}]}

    base_url: Annotated[NonEmptyStr, describe("The API's address.")] = "https://api.machinemetrics.com"
    api_key: Annotated[NonEmptyStr, describe("API key, sent as a bearer token.", secret=True)]
    timeout: Annotated[float, describe("Seconds to wait for an answer.", gt=0)] = 30.0
    streams: Annotated[list[MachineMetricsStream], describe("Queries.", min_length=1)]

    def violations(self, path: JsonPath) -> list[Violation]:
        out = http_url_violations("base_url", self.base_url, path)
        for index, stream in enumerate(self.streams):
            s_path = [*path, "streams", index]
            if stream.query == "production" and not stream.metrics:
                out.append(error("a production query needs metrics (e.g. [\"totalParts\"])",
                                 [*s_path, "metrics"]))
            if stream.query in ("downtime", "quality") and stream.metrics:
                out.append(error(f"a {stream.query} query takes no metrics: its figures are fixed",
                                 [*s_path, "metrics"]))
            if stream.initial_value is not None and not is_placeholder(stream.initial_value):
                try:
                    parse_time(stream.initial_value)
                except ValueError:
                    out.append(error(f"initial_value {stream.initial_value!r} is not an ISO 8601 "
                                     "date-time (e.g. 2026-01-01T00:00:00Z)", [*s_path, "initial_value"]))
        return out

    def open_stream(self, stream: MachineMetricsStream, resume_state: Any, ctx: RunContext,
                    worker: None) -> _MachineMetricsReader:
        return _MachineMetricsReader(self, stream, ctx, resume_state)


def flatten(answer: dict[str, Any], start: datetime, end: datetime,
            grouped: bool = True) -> list[dict[str, Any]]:
    """One row per innermost group of a rollup answer (see the module docstring); for a
    query without groups (``grouped`` false), one row of the totals.

    :raises MachineMetricsError: the answer does not have the rollup's shape.
    """
    try:
        entities = answer.get("entities") or {}
        rows: list[dict[str, Any]] = []

        def walk(items: list[dict[str, Any]], prefix: dict[str, Any]) -> None:
            for item in items:
                kind, ident = item["entity"]["type"], str(item["entity"]["id"])
                info = (entities.get(kind) or {}).get(ident) or {}
                fields = dict(prefix)
                if "name" in info:
                    fields[kind] = info["name"]
                fields[f"{kind}_id"] = ident
                for key in _TIME_KEYS:
                    if key in info:
                        fields[f"{kind}_{key}"] = parse_time(info[key])
                        if key == "start":
                            fields["timestamp"] = fields[f"{kind}_start"]
                if item.get("items"):
                    walk(item["items"], fields)
                else:
                    rows.append({**fields, **item.get("aggregate", {})})

        if grouped:
            walk(answer.get("items") or [], {})
        elif answer.get("aggregate"):
            rows.append(dict(answer["aggregate"]))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise MachineMetricsError(f"the answer for {iso(start)}..{iso(end)} is not a rollup: "
                                  f"{type(exc).__name__}: {exc}") from exc
    return [{"timestamp": row.pop("timestamp", start), "start": start, "end": end, **row} for row in rows]


class _MachineMetricsReader(StreamReader):
    marker_category = "machinemetrics"
    failure_text = "MachineMetrics query failed"
    retryable = (MachineMetricsError,)

    def __init__(self, receiver: MachineMetricsReceiver, stream: MachineMetricsStream,
                 ctx: RunContext, state: Any) -> None:
        self._receiver = receiver
        self._stream = stream
        self._ctx = ctx
        self._window = timedelta(seconds=stream.window)
        self._next: datetime | None = parse_time(state) if isinstance(state, str) else None
        self._client: httpx.Client | None = None

    @property
    def url(self) -> str:
        """Where the stream's query goes."""
        return f"{self._receiver.base_url.rstrip('/')}/reports/{self._stream.query}"

    def _start(self) -> datetime:
        if self._next is None:  # windows start on whole seconds, as the state keeps them
            if self._stream.initial_value is not None:
                self._next = parse_time(self._stream.initial_value).replace(microsecond=0)
            else:  # the start of the current window, counted from the epoch
                now = int(self._ctx.now().timestamp())
                self._next = datetime.fromtimestamp(now - now % self._stream.window, UTC)
        return self._next

    def _due(self, start: datetime) -> bool:
        return start + self._window + timedelta(seconds=self._stream.delay) <= self._ctx.now()

    def read(self) -> tuple[list[Batch], bool]:
        start = self._start()
        if not self._due(start):
            return [], False
        end = start + self._window
        rows = flatten(self._ask(start, end), start, end, bool(self._stream.group_by))
        self._next = end
        more = self._due(end)
        if not rows:
            return [], more
        frame = pl.DataFrame(rows, infer_schema_length=None)
        frame = frame.with_columns(pl.col(name).dt.replace_time_zone("UTC")
                                   for name, dtype in frame.schema.items()
                                   if isinstance(dtype, pl.Datetime) and dtype.time_zone is None)
        # a window is asked once; asked again after a crash, its rows are known by the window's
        # start and their place in the answer
        ordinals = pl.DataFrame({"window": [start.replace(tzinfo=None)] * frame.height,
                                 "row": range(frame.height)}, schema={"window": pl.Datetime("us"), "row": pl.Int64})
        batch = Batch(self._receiver.data_receiver_name, self._stream.key, frame,
                      f"{self.url} {iso(start)}..{iso(end)}", position=Position("", ordinals))
        return [batch], more

    def _ask(self, start: datetime, end: datetime) -> dict[str, Any]:
        import httpx

        stream = self._stream
        body: dict[str, Any] = {"start": iso(start), "end": iso(end)}
        if stream.metrics:
            body["data"] = [{"metric": m} for m in stream.metrics]
        if stream.group_by:
            body["groupBy"] = [{"group": g} for g in stream.group_by]
        if stream.filter:
            body["filter"] = stream.filter
        if self._client is None:
            self._client = httpx.Client(timeout=self._receiver.timeout, headers={
                "Authorization": f"Bearer {self._receiver.api_key}", "Accept": "application/json"})
        try:
            response = self._client.post(self.url, json=body)
        except httpx.TimeoutException as exc:
            raise MachineMetricsError(f"POST {self.url}: no answer within {self._receiver.timeout} s") from exc
        except httpx.TransportError as exc:
            raise MachineMetricsError(f"POST {self.url}: {type(exc).__name__}: {exc or 'connection failed'}") \
                from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not response.is_success:
            if isinstance(answer, dict) and "error" in answer:
                why = f"{answer['error']}: {answer.get('error_description', '')}".rstrip(": ")
            else:
                why = repr(response.text[:200])
            hint = {401: " (check api_key)", 403: " (the API key may not read reports)",
                    404: " (check base_url)"}.get(response.status_code, "")
            raise MachineMetricsError(f"POST {self.url} for {iso(start)}..{iso(end)}: HTTP "
                                      f"{response.status_code} {why}{hint}")
        if not isinstance(answer, dict):
            raise MachineMetricsError(f"POST {self.url}: the answer is not a JSON object")
        return answer

    def snapshot(self) -> str | None:
        return iso(self._next) if self._next is not None else None

    def describe(self) -> str:
        return f"next window from {iso(self._next)}" if self._next is not None else "no window read yet"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
