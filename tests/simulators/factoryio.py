"""A Factory I/O web server simulator, written from ``shared/specs/factoryio-web-api.txt``.

Paths, bodies and status codes as the document gives them:

- ``GET /api/tags`` (query ``name`` with ``*`` and ``?``, case-insensitive; ``type`` one of
  ``bit``/``int``/``float``; ``kind`` one of ``input``/``output``), ``GET /api/tags/{id}``,
  ``GET /api/tags/by-name/{name}``: tag objects (``name``, ``id``, ``address``, ``type``
  and ``kind`` capitalised as the document's examples show them, ``value``,
  ``openCircuit``, ``shortCircuit``, ``isForced``, ``forcedValue``);
- ``GET /api/tag/values`` and ``GET /api/tag/values/by-name`` with a JSON array of ids or
  names as the body (none: every tag): ``{"id", "value"}`` per tag, or ``{"id", "code":
  404, "error": "Tag with id '...' not found."}`` per unknown tag; by name, every tag of
  the name answers;
- ``PUT /api/tag/values`` and ``PUT /api/tag/values/by-name``: sets values; only the
  refusals are answered (``406`` "Not allowed to set value of an input tag.").

Switches for tests: :attr:`tag_errors` (an id answered with that code and message),
:meth:`load_scene` (a scene change: new ids), and the common ``outage``, ``slow_seconds``
(:mod:`tests.simulators._serve`; Factory I/O has no authentication). With ``live`` the
scene moves by itself (counters count, the scale weighs), as the demo scene does when run
as a process::

    python -m tests.simulators.factoryio --port 7410
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import Any

from litestar import Litestar, Request, Response, get, put

from tests.simulators._serve import Simulator, arguments


def tag(name: str, address: int, type_: str, kind: str, value: Any = None,
        id_: str | None = None) -> dict[str, Any]:
    """A tag object as the web server answers it (``type_`` bit/int/float, ``kind`` input/output)."""
    default = {"bit": False, "int": 0, "float": 0.0}[type_]
    return {"name": name, "id": id_ or str(uuid.uuid4()), "address": address,
            "type": type_.capitalize(), "kind": kind.capitalize(),
            "value": default if value is None else value, "openCircuit": False,
            "shortCircuit": False, "isForced": False, "forcedValue": default}


def demo_scene() -> list[dict[str, Any]]:
    """A sorting station by weight: the tags the demo and the docs' example read. Names repeat
    as they do in Factory I/O (``FACTORY I/O (Reset)`` is an input and an output at 498; the
    scene has two scales, both ``Weight``)."""
    return [
        tag("Entry conveyor", 0, "bit", "output", True),
        tag("At entry", 0, "bit", "input"),
        tag("Pieces sorted", 1, "int", "input"),
        tag("Weight", 0, "float", "input"),
        tag("Weight", 1, "float", "input"),
        tag("Emergency stop", 2, "bit", "input", True),
        tag("FACTORY I/O (Reset)", 498, "bit", "output"),
        tag("FACTORY I/O (Reset)", 498, "bit", "input"),
        tag("Conveyor speed", 0, "float", "output", 1.5),
    ]


def _pattern(name: str) -> re.Pattern[str]:
    """The API's name filter: ``*`` any run, ``?`` one character, case-insensitive."""
    parts = ("." * (c == "?") or ".*" * (c == "*") or re.escape(c) for c in name)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


class FactoryIoSimulator(Simulator):
    """A Factory I/O scene served over the web API."""

    name = "factoryio"

    def __init__(self, scene: list[dict[str, Any]] | None = None, port: int | None = None,
                 live: bool = False) -> None:
        super().__init__(port)
        self.tags: list[dict[str, Any]] = scene if scene is not None else demo_scene()
        self.tag_errors: dict[str, tuple[int, str]] = {}
        self.live = live
        self._started = time.monotonic()
        self.value_requests = 0

    # ------------------------------------------------------------------ test controls

    def load_scene(self, scene: list[dict[str, Any]]) -> None:
        """Replace the scene (a new scene has new tag ids)."""
        with self._lock:
            self.tags = scene

    def set(self, name: str, value: Any, *, kind: str | None = None) -> None:
        """Set every tag called ``name`` (of ``kind`` when given) to ``value``."""
        with self._lock:
            for t in self.tags:
                if t["name"] == name and (kind is None or t["kind"].lower() == kind):
                    t["value"] = value

    def ids(self, name: str) -> list[str]:
        """The ids of the tags called ``name``."""
        return [t["id"] for t in self.tags if t["name"] == name]

    def receiver(self, streams: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
        """A ``factoryio`` receiver entry reading this scene."""
        return {"data_receiver_name": "factoryio", "protocol": "factoryio", "host": "127.0.0.1",
                "port": self.port, "timeout": 2, "poll_interval": 1, "streams": streams, **overrides}

    # ------------------------------------------------------------------ the scene

    def _tick(self) -> None:
        if not self.live:
            return
        t = time.monotonic() - self._started
        for item in self.tags:
            if item["name"] == "Pieces sorted":
                item["value"] = int(t / 2)
            elif item["name"] == "Weight":
                item["value"] = round(5 + 4 * math.sin(t / 7 + item["address"]), 3)
            elif item["name"] == "At entry":
                item["value"] = int(t) % 4 == 0

    def on_read_values(self) -> None:
        """Called (under the lock) before each values request is answered; tests override it."""

    def _find(self, name: str | None, type_: str | None, kind: str | None) -> list[dict[str, Any]]:
        pattern = _pattern(name) if name is not None else None
        return [t for t in self.tags
                if (pattern is None or pattern.fullmatch(t["name"]))
                and (type_ is None or t["type"].lower() == type_.lower())
                and (kind is None or t["kind"].lower() == kind.lower())]

    def _value(self, item: dict[str, Any], key: str) -> dict[str, Any]:
        failure = self.tag_errors.get(item["id"])
        if failure is not None:
            return {key: item[key], "code": failure[0], "error": failure[1]}
        value = item["forcedValue"] if item["isForced"] else item["value"]
        return {key: item[key], "value": value}

    def app(self) -> Litestar:
        sim = self

        async def gate(request: Request[Any, Any, Any]) -> Response[Any] | None:
            sim.seen(request.method, request.url.path)
            await sim.switches.delay()
            if sim.switches.outage:
                return Response({"code": 503, "error": "Factory I/O is not running a scene."},
                                status_code=503)
            return None

        async def body_list(request: Request[Any, Any, Any]) -> list[Any] | None:
            raw = await request.body()
            if not raw.strip():
                return None
            value = json.loads(raw)
            if not isinstance(value, list):
                raise ValueError("the body must be a JSON array")
            return value

        @get("/api/tags")
        async def list_tags(request: Request[Any, Any, Any]) -> Response[Any]:
            if (refused := await gate(request)) is not None:
                return refused
            params = request.query_params
            for key, allowed in (("type", {"bit", "int", "float"}), ("kind", {"input", "output"})):
                if key in params and params[key].lower() not in allowed:
                    return Response({"code": 400, "error": f"Invalid {key} '{params[key]}'."},
                                    status_code=400)
            with sim._lock:
                sim._tick()
                return Response(sim._find(params.get("name"), params.get("type"), params.get("kind")))

        @get("/api/tags/by-name/{name:path}")
        async def tags_by_name(request: Request[Any, Any, Any]) -> Response[Any]:
            if (refused := await gate(request)) is not None:
                return refused
            name = request.path_params["name"].removeprefix("/")  # a %2F in the name (I/O) arrives decoded
            with sim._lock:
                sim._tick()
                found = [t for t in sim.tags if t["name"] == name]
            if not found:
                return Response({"code": 404, "error": f"Tag named '{name}' not found."}, status_code=404)
            return Response(found)

        @get("/api/tags/{tag_id:str}")
        async def one_tag(request: Request[Any, Any, Any]) -> Response[Any]:
            if (refused := await gate(request)) is not None:
                return refused
            tag_id = request.path_params["tag_id"]
            with sim._lock:
                sim._tick()
                found = [t for t in sim.tags if t["id"] == tag_id]
            if not found:
                return Response({"code": 404, "error": f"Tag with id '{tag_id}' not found."},
                                status_code=404)
            return Response(found[0])

        @get("/api/tag/values")
        async def values(request: Request[Any, Any, Any]) -> Response[Any]:
            return await read_values(request, "id")

        @get("/api/tag/values/by-name")
        async def values_by_name(request: Request[Any, Any, Any]) -> Response[Any]:
            return await read_values(request, "name")

        async def read_values(request: Request[Any, Any, Any], key: str) -> Response[Any]:
            if (refused := await gate(request)) is not None:
                return refused
            try:
                wanted = await body_list(request)
            except ValueError as exc:
                return Response({"code": 400, "error": str(exc)}, status_code=400)
            with sim._lock:
                sim.value_requests += 1
                sim._tick()
                sim.on_read_values()
                if wanted is None:
                    return Response([sim._value(t, key) for t in sim.tags])
                out = []
                for one in wanted:
                    found = [t for t in sim.tags if t[key] == one]
                    if not found:
                        what = "with id" if key == "id" else "named"
                        out.append({key: one, "code": 404, "error": f"Tag {what} '{one}' not found."})
                    out.extend(sim._value(t, key) for t in found)
                return Response(out)

        @put("/api/tag/values", status_code=200)
        async def set_values(request: Request[Any, Any, Any]) -> Response[Any]:
            return await write_values(request, "id")

        @put("/api/tag/values/by-name", status_code=200)
        async def set_values_by_name(request: Request[Any, Any, Any]) -> Response[Any]:
            return await write_values(request, "name")

        async def write_values(request: Request[Any, Any, Any], key: str) -> Response[Any]:
            if (refused := await gate(request)) is not None:
                return refused
            try:
                wanted = await body_list(request) or []
            except ValueError as exc:
                return Response({"code": 400, "error": str(exc)}, status_code=400)
            refusals = []
            with sim._lock:
                for one in wanted:
                    found = [t for t in sim.tags if t[key] == one.get(key)]
                    if not found:
                        what = "with id" if key == "id" else "named"
                        refusals.append({key: one.get(key), "code": 404,
                                         "error": f"Tag {what} '{one.get(key)}' not found."})
                    for t in found:
                        if t["kind"] == "Input":
                            refusals.append({key: t[key], "code": 406,
                                             "error": "Not allowed to set value of an input tag."})
                        else:
                            t["value"] = one.get("value")
            return Response(refusals)

        return Litestar(route_handlers=[list_tags, tags_by_name, one_tag, values, values_by_name,
                                        set_values, set_values_by_name], debug=False, logging_config=None)


if __name__ == "__main__":
    args = arguments("A Factory I/O web server simulator with a sorting-station scene.")
    FactoryIoSimulator(port=args.port, live=True).serve_forever()
