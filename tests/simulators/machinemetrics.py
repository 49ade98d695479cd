"""A MachineMetrics REST API simulator: production, downtime and quality queries, written
from ``shared/specs/machinemetrics-rest-api.txt``.

- ``POST /reports/production``, ``/reports/downtime``, ``/reports/quality`` (the paths of
  ``api.machinemetrics.com``; the document names the operations, not the paths) with the
  document's query object: ``start`` and ``end`` (ISO 8601 date-times, ``start`` before
  ``end``), ``data`` (production: ``[{"metric": ...}]``), ``groupBy`` (``[{"group": ...}]``)
  and ``filter`` (``{"machine": [ids]}``). The answer has the document's shape: ``range``,
  ``aggregate``, ``entities`` (machines and reasons with their names, time groups with
  ``start``, ``end`` and ``shopDate``) and nested ``items``, one level per group.
- Bearer authentication (``Authorization: Bearer <api_key>``). Errors carry the
  document's ``{"error", "error_description"}`` body: 401 ``invalid_token``, 403
  ``insufficient_scope`` (:attr:`forbidden`), 404 for other paths, 400 ``invalid_request``
  for a malformed query, 429 ``rate_limit_exceeded`` with ``Retry-After`` for the next
  :attr:`throttle` requests, 503 during an ``outage``.

Answers come from :attr:`canned` (exact answers for exact ``(query, start, end)``, e.g. the
document's examples), else :attr:`answer` when a test sets it, else a deterministic plant
of three machines whose figures follow from the window (the same query always gets the same
answer). Run as a process for the demo::

    python -m tests.simulators.machinemetrics --port 8010   # api_key: demo-key
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Litestar, Request, Response, post
from litestar.exceptions import NotFoundException

from tests.simulators._serve import Simulator, arguments

MACHINES = {"0e871f8e-a48a-4a7b-ba33-a02cba7d4f2c": "MACHINE 1",
            "5faa6680-fa0f-4e37-ba0b-09a46a945cef": "MACHINE 2",
            "f1e76e5f-a9cd-4ae0-9c63-48b78e3cf013": "MACHINE 3"}
REASONS = {"downtime": {"33": {"id": 33, "name": "Chipping Out", "color": "#dea638"},
                        "95": {"id": 95, "name": "Part Changeover", "color": "#de7020"},
                        "setup": {"id": "setup", "name": "Setup", "color": "#edde00", "virtual": True}},
           "quality": {"24": {"id": 24, "name": "Chip Impressions", "color": "#5f5da8"},
                       "37": {"id": 37, "name": "Burrs", "color": "#14f2e5"}}}
#: Metrics the plant model adds up over groups, per query.
METRICS = {"production": {"totalParts", "goodParts", "rejectParts", "timeInCycle"},
           "downtime": {"downtimeMs", "recordCount"},
           "quality": {"rejectCount", "recordCount"}}
GROUPS = {"production": {"machine", "day", "hour"},
          "downtime": {"machine", "reason", "day", "hour"},
          "quality": {"machine", "reason", "day", "hour"}}
Query = dict[str, Any]


def iso(moment: datetime) -> str:
    """``2017-07-19T10:00:00.000Z``, as the API writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse(text: Any, what: str) -> datetime:
    """An ISO 8601 date-time (``Z`` or an offset) as UTC.

    :raises ValueError: not one, naming ``what``.
    """
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} must be a valid ISO 8601 date-time format (e.g. "
                         f"\"2017-07-19T10:00:00Z\")") from None
    if moment.tzinfo is None:
        raise ValueError(f"{what} must carry a time zone (e.g. \"2017-07-19T10:00:00Z\")")
    return moment.astimezone(UTC)


def _figure(*key: Any, top: int) -> int:
    digest = hashlib.sha256("|".join(map(str, key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (top + 1)


class MachineMetricsSimulator(Simulator):
    """The reporting API of one MachineMetrics company."""

    name = "machinemetrics"

    def __init__(self, api_key: str = "demo-key", port: int | None = None) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.forbidden = False
        self.throttle = 0
        self.canned: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.answer: Callable[[str, datetime, datetime, Query], dict[str, Any]] | None = None
        self.queries: list[tuple[str, Query]] = []  # every query answered 200

    def receiver(self, streams: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
        """A ``machinemetrics`` receiver entry querying this simulator."""
        return {"data_receiver_name": "machinemetrics", "protocol": "machinemetrics",
                "base_url": self.base_url, "api_key": self.api_key, "timeout": 5,
                "poll_interval": 1, "streams": streams, **overrides}

    # ------------------------------------------------------------------ the plant model

    def plant(self, query: str, start: datetime, end: datetime, body: Query) -> dict[str, Any]:
        """The deterministic answer of the plant model (see the module docstring)."""
        metrics = ([d["metric"] for d in body.get("data", [])] if query == "production"
                   else sorted(METRICS[query]))
        groups = [g["group"] for g in body.get("groupBy", [])]
        machines = [m for m in MACHINES if m in (body.get("filter", {}).get("machine") or MACHINES)]
        entities: dict[str, dict[str, Any]] = {}
        seconds = (end - start).total_seconds()

        def members(group: str) -> list[str]:
            if group == "machine":
                entities["machine"] = {m: {"id": m, "name": MACHINES[m]} for m in machines}
                return machines
            if group == "reason":
                entities["reason"] = dict(REASONS[query])
                return list(REASONS[query])
            step = timedelta(days=1) if group == "day" else timedelta(hours=1)
            spans, at = {}, start
            while at < end:
                spans[str(len(spans))] = {"start": iso(at), "end": iso(min(at + step, end)),
                                          "shopDate": iso(datetime(at.year, at.month, at.day, 4, tzinfo=UTC))}
                at += step
            entities[group] = spans
            return list(spans)

        def leaf(path: tuple[tuple[str, str], ...]) -> dict[str, int]:
            keyed = dict(path)
            out = {}
            for metric in metrics:
                top = int(seconds * 1000) if metric in ("timeInCycle", "downtimeMs") else max(int(seconds / 30), 1)
                if "machine" not in keyed:  # the plant total: the machines' sum
                    out[metric] = sum(_figure(query, metric, iso(start), iso(end), m, *path, top=top // 3)
                                      for m in machines)
                else:
                    out[metric] = _figure(query, metric, iso(start), iso(end), *path, top=top // 3)
            return out

        def level(depth: int, path: tuple[tuple[str, str], ...]) -> tuple[list[dict[str, Any]], dict[str, int]]:
            if depth == len(groups):
                return [], leaf(path)
            items, total = [], dict.fromkeys(metrics, 0)
            for member in members(groups[depth]):
                children, aggregate = level(depth + 1, (*path, (groups[depth], member)))
                item: dict[str, Any] = {"entity": {"type": groups[depth], "id": member}, "aggregate": aggregate}
                if children:
                    item["items"] = children
                items.append(item)
                for metric in metrics:
                    total[metric] += aggregate[metric]
            return items, total

        items, aggregate = level(0, ())
        answer: dict[str, Any] = {"range": {"start": iso(start), "end": iso(end)}, "aggregate": aggregate,
                                  "entities": entities}
        if items:
            answer["items"] = items
        return answer

    # ------------------------------------------------------------------ HTTP

    def _check(self, query: str, body: Any) -> tuple[datetime, datetime]:
        if not isinstance(body, dict):
            raise ValueError("the body must be a query object")
        start, end = parse(body.get("start"), "start"), parse(body.get("end"), "end")
        if start >= end:
            raise ValueError("start must be before end")
        groups = [g.get("group") if isinstance(g, dict) else g for g in body.get("groupBy", [])]
        unknown = [g for g in groups if g not in GROUPS[query]]
        if unknown and self.answer is None:
            raise ValueError(f"groupBy: unsupported group {unknown[0]!r}")
        if query == "production":
            metrics = [d.get("metric") if isinstance(d, dict) else d for d in body.get("data", [])]
            if not metrics:
                raise ValueError("data: at least one metric is required")
            bad = [m for m in metrics if m not in METRICS["production"]]
            if bad and self.answer is None:
                raise ValueError(f"data: unsupported metric {bad[0]!r}")
        return start, end

    def app(self) -> Litestar:
        sim = self

        def refuse(status: int, error: str, description: str, **headers: str) -> Response[Any]:
            return Response({"error": error, "error_description": description}, status_code=status,
                            headers=headers or None)

        @post("/reports/{report_name:str}", status_code=200)
        async def report(request: Request[Any, Any, Any]) -> Response[Any]:
            query = request.path_params["report_name"]
            sim.seen("POST", request.url.path)
            await sim.switches.delay()
            if sim.switches.outage:
                return refuse(503, "service_unavailable", "The service is temporarily unavailable")
            if query not in METRICS:
                return refuse(404, "not_found", f"Cannot POST /reports/{query}")
            if (request.headers.get("authorization") != f"Bearer {sim.api_key}"
                    or sim.switches.reject_auth):
                return refuse(401, "invalid_token", "Invalid token: access token is invalid")
            if sim.forbidden:
                return refuse(403, "insufficient_scope",
                              "The request requires higher privileges than provided by the access token")
            if sim.throttle > 0:
                sim.throttle -= 1
                return refuse(429, "rate_limit_exceeded", "Too many requests, retry later", **{"Retry-After": "1"})
            try:
                body = json.loads(await request.body())
                start, end = sim._check(query, body)
            except ValueError as exc:
                return refuse(400, "invalid_request", str(exc))
            key = (query, iso(start), iso(end))
            if key in sim.canned:
                answer = sim.canned[key]
            elif sim.answer is not None:
                answer = sim.answer(query, start, end, body)
            else:
                answer = sim.plant(query, start, end, body)
            with sim._lock:
                sim.queries.append((query, body))
            return Response(answer)

        def not_found(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
            sim.seen(request.method, request.url.path)
            return refuse(404, "not_found", f"Cannot {request.method} {request.url.path}")

        return Litestar(route_handlers=[report], exception_handlers={NotFoundException: not_found},
                        debug=False, logging_config=None)


if __name__ == "__main__":
    args = arguments("A MachineMetrics reporting API simulator (bearer api_key: demo-key).")
    MachineMetricsSimulator(port=args.port).serve_forever()
