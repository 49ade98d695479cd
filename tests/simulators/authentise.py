"""An Authentise 3DIAX simulator: sessions, modelers, captures and capture uploads, written
from ``shared/specs/authentise-3diax-capture-api.txt`` (the sample script's calls).

One server plays both hosts of the document: ``users.authentise.com`` (``POST /sessions/``)
and ``data.authentise.com`` (``/<resource>/``):

- ``POST /sessions/`` with ``{"username", "password"}``: ``201`` and a ``session`` cookie;
  ``401`` for unknown credentials (or with ``reject_auth``);
- every data call needs the cookie (``401`` otherwise; :meth:`expire_sessions` ends them
  all, as a session timeout would);
- ``GET /capture-type/`` and ``GET /modeler-type/``: ``{"resources": [...]}`` with the
  document's modeler types and capture types (their ids, URIs on this server);
- ``POST /modeler/``: ``201`` with ``Location``; ``GET`` and ``DELETE /modeler/<id>/``;
- ``POST /capture/`` with ``{"modeler", "capture_type"}`` (URIs): ``201`` with
  ``Location`` (the capture) and ``X-Upload-Location`` (where its file goes); an unknown
  modeler or capture type is ``400``; ``GET /capture/`` lists captures;
- ``PUT <X-Upload-Location>`` with ``Content-Type: application/x-gzip``: the body must be
  gzip (``400`` otherwise); ``204``. A capture takes one upload (``409`` for a second).
  :attr:`fail_uploads` answers the next uploads ``500``;
- ``GET /build/``: one build per uploaded status capture naming a ``currentJob``.

Errors have the shape ``{"errors": [{"code", "title"}]}``. ``outage`` answers ``503``,
``slow_seconds`` delays every answer. As a process, with one modeler ready for the demo::

    python -m tests.simulators.authentise --port 8020
    # username demo@plant.local, password demo; modeler <base>/modeler/<DEMO_MODELER>/
"""

from __future__ import annotations

import gzip
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from litestar import Litestar, Request, Response, route

from tests.simulators._serve import Simulator, arguments

#: The document's modeler types and their capture types (ids as the document gives them).
MODELER_TYPES = [
    ("728d2c92-75b6-4c67-a1e4-3e587c32e375", "Fortus 250", "FDM",
     [("bc53aced-b309-4bdf-8ece-69947f4a9db7", "catex.modeler.jobs", None),
      ("98f40df0-318f-4ac0-87f5-765430d1d127", "catex.modeler.status", 300)]),
    ("1df33a4c-1b96-4098-a44a-5c98c92b018b", "Fortus 400", "FDM",
     [("64251c64-3b2c-4265-a8e8-48599494a902", "catex.modeler.jobs", None),
      ("103691f1-8188-4aad-b43e-a29ef3b726d7", "catex.modeler.status", 300)]),
    ("85be369e-83a2-4f39-ba7c-90887abc3898", "Objet 350", "Binder Jet",
     [("e428be7e-c42c-4b16-8972-c819ba5d4611", "connex.modeler.log", 300)]),
    ("1f124472-efd7-441d-b659-c480e5f55e14", "Uprint", "FDM",
     [("dfa7a7b6-fc30-453e-b516-76b0a9bfe768", "catex.modeler.jobs", None),
      ("f9fa10dc-3bdb-463f-a6a6-7e6934aeae97", "catex.modeler.status", 300)]),
]
DEMO_MODELER = "00000000-0000-4000-8000-0000000000d1"
DEMO_USER = ("demo@plant.local", "demo")


@dataclass
class Upload:
    """One capture file received: the capture's URI, its modeler and type URIs, the gzip
    body as sent and its text."""

    capture: str
    modeler: str
    capture_type: str
    compressed: bytes
    content: bytes


def _errors(status: int, code: str, title: str) -> Response[Any]:
    return Response({"errors": [{"code": code, "title": title}]}, status_code=status)


class AuthentiseSimulator(Simulator):
    """The Authentise users and data services of one account."""

    name = "authentise"

    def __init__(self, users: dict[str, str] | None = None, port: int | None = None) -> None:
        super().__init__(port)
        self.users = users or {"engineering@authentise.com": "3diax-s3cret"}
        self.sessions: set[str] = set()
        self.logins = 0
        self.fail_uploads = 0
        self.modelers: dict[str, dict[str, Any]] = {}
        self.captures: dict[str, dict[str, Any]] = {}
        self.uploads: list[Upload] = []

    # ------------------------------------------------------------------ helpers for tests

    @property
    def users_url(self) -> str:
        """The ``users_url`` of a transmit logging in here."""
        return f"{self.base_url}/sessions/"

    @property
    def data_url(self) -> str:
        """The ``data_url`` of a transmit (the document's ``DATA_URL`` without ``{}/``)."""
        return f"{self.base_url}/"

    def uri(self, resource: str, ident: str) -> str:
        """``<base>/<resource>/<id>/``."""
        return f"{self.base_url}/{resource}/{ident}/"

    def add_modeler(self, modeler_type: str = MODELER_TYPES[0][0], ident: str | None = None,
                    name: str = "My printer name") -> str:
        """A modeler of ``modeler_type`` (an id); returns its URI."""
        ident = ident or str(uuid.uuid4())
        self.modelers[ident] = {"uri": self.uri("modeler", ident), "name": name, "ip_address": "10.0.0.10",
                                "description": "Blue Steel", "serial_number": "ABBA",
                                "type": self.uri("modeler-type", modeler_type)}
        return self.uri("modeler", ident)

    def capture_type_uri(self, name: str = "catex.modeler.status",
                         modeler_type: str = MODELER_TYPES[0][0]) -> str:
        """The URI of the capture type ``name`` of ``modeler_type``."""
        for type_id, _, _, kinds in MODELER_TYPES:
            for ident, kind, _ in kinds:
                if type_id == modeler_type and kind == name:
                    return self.uri("capture-type", ident)
        raise KeyError(name)

    def expire_sessions(self) -> None:
        """End every session (the next data call answers 401)."""
        self.sessions.clear()

    def transmit(self, modeler: str, **overrides: Any) -> dict[str, Any]:
        """An ``authentise_capture`` transmit entry uploading here as the first user."""
        username, password = next(iter(self.users.items()))
        return {"transmit_name": "authentise", "transmit_type": "authentise_capture",
                "users_url": self.users_url, "data_url": self.data_url, "username": username,
                "password": password, "modeler": modeler, "capture_type": "catex.modeler.status",
                "timeout": 5, **overrides}

    # ------------------------------------------------------------------ resources

    def _capture_types(self) -> list[dict[str, Any]]:
        return [{"capture_type": kind, "interval": interval, "uri": self.uri("capture-type", ident),
                 "modeler_type": self.uri("modeler-type", type_id)}
                for type_id, _, _, kinds in MODELER_TYPES for ident, kind, interval in kinds]

    def _modeler_types(self) -> list[dict[str, Any]]:
        return [{"description": None, "name": name, "uri": self.uri("modeler-type", type_id),
                 "technology": technology, "manufacturer": "Stratasys",
                 "capture_types": [{"capture_type": kind, "interval": interval,
                                    "uri": self.uri("capture-type", ident)} for ident, kind, interval in kinds]}
                for type_id, name, technology, kinds in MODELER_TYPES]

    def _builds(self) -> list[dict[str, Any]]:
        out = []
        for upload in self.uploads:
            job = re.search(rb'machineStatus\(currentJob\)\s*\{[^}]*?-jobName\s+"([^"]*)"', upload.content)
            if job:
                out.append({"uri": self.uri("build", upload.capture.rstrip("/").rsplit("/", 1)[-1]),
                            "modeler": upload.modeler, "name": job.group(1).decode(errors="replace")})
        return out

    def app(self) -> Litestar:
        sim = self

        @route("/{path:path}", http_method=["GET", "POST", "PUT", "DELETE"])
        async def handle(request: Request[Any, Any, Any]) -> Response[Any]:
            path = f"/{request.url.path.strip('/')}/"  # the resources end in '/', as the document writes them
            sim.seen(request.method, path)
            await sim.switches.delay()
            if sim.switches.outage:
                return _errors(503, "unavailable", "Service unavailable")
            body = await request.body()
            if path == "/sessions/" and request.method == "POST":
                return sim._login(body)
            upload = re.fullmatch(r"/capture/([\w-]+)/upload/", path)
            if upload and request.method == "PUT":  # a signed URL: no session needed
                return sim._upload(upload.group(1), request, body)
            if request.cookies.get("session") not in sim.sessions:
                return _errors(401, "unauthorized", "You must be logged in")
            return sim._data(request.method, path, body)

        return Litestar(route_handlers=[handle], debug=False, logging_config=None)

    def _login(self, body: bytes) -> Response[Any]:
        try:
            given = json.loads(body)
        except ValueError:
            return _errors(400, "invalid-json", "The body is not JSON")
        if (not isinstance(given, dict) or self.users.get(given.get("username")) != given.get("password")
                or self.switches.reject_auth):
            return _errors(401, "unauthorized", "Invalid username or password")
        token = secrets.token_hex(16)
        self.sessions.add(token)
        self.logins += 1
        response: Response[Any] = Response(None, status_code=201)
        response.set_cookie("session", token, path="/", httponly=True)
        return response

    def _data(self, method: str, path: str, body: bytes) -> Response[Any]:
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts == ["capture-type"]:
            return Response({"resources": self._capture_types()})
        if method == "GET" and parts == ["modeler-type"]:
            return Response({"resources": self._modeler_types()})
        if method == "GET" and parts == ["build"]:
            return Response({"resources": self._builds()})
        if method == "GET" and parts == ["capture"]:
            return Response({"resources": list(self.captures.values())})
        if parts[:1] == ["modeler"] and len(parts) == 2:
            modeler = self.modelers.get(parts[1])
            if modeler is None:
                return _errors(404, "not-found", f"No modeler {parts[1]}")
            if method == "DELETE":
                del self.modelers[parts[1]]
                return Response(None, status_code=204)
            return Response(modeler)
        if method == "POST" and parts in (["modeler"], ["capture"]):
            try:
                given = json.loads(body)
            except ValueError:
                return _errors(400, "invalid-json", "The body is not JSON")
            if not isinstance(given, dict):
                return _errors(400, "invalid-json", "The body is not a JSON object")
            return self._create_modeler(given) if parts == ["modeler"] else self._create_capture(given)
        return _errors(404, "not-found", f"Cannot {method} {path}")

    def _create_modeler(self, given: dict[str, Any]) -> Response[Any]:
        type_id = str(given.get("type", "")).rstrip("/").rsplit("/", 1)[-1]
        if type_id not in {t[0] for t in MODELER_TYPES}:
            return _errors(400, "invalid-type", f"Unknown modeler type {given.get('type')!r}")
        uri = self.add_modeler(type_id, name=str(given.get("name", "")))
        return Response(None, status_code=201, headers={"Location": uri})

    def _create_capture(self, given: dict[str, Any]) -> Response[Any]:
        modeler = str(given.get("modeler", ""))
        kind = str(given.get("capture_type", ""))
        modeler_id = modeler.rstrip("/").rsplit("/", 1)[-1]
        if modeler != self.uri("modeler", modeler_id) or modeler_id not in self.modelers:
            return _errors(400, "invalid-modeler", f"Unknown modeler {modeler!r}")
        if kind not in {t["uri"] for t in self._capture_types()}:
            return _errors(400, "invalid-capture-type", f"Unknown capture type {kind!r}")
        ident = str(uuid.uuid4())
        self.captures[ident] = {"uri": self.uri("capture", ident), "modeler": modeler, "capture_type": kind,
                                "status": "created"}
        return Response(None, status_code=201, headers={
            "Location": self.uri("capture", ident),
            "X-Upload-Location": f"{self.uri('capture', ident)}upload/"})

    def _upload(self, ident: str, request: Request[Any, Any, Any], body: bytes) -> Response[Any]:
        capture = self.captures.get(ident)
        if capture is None:
            return _errors(404, "not-found", f"No capture {ident}")
        if capture["status"] == "uploaded":
            return _errors(409, "conflict", f"Capture {ident} has its file already")
        if self.fail_uploads > 0:
            self.fail_uploads -= 1
            return _errors(500, "internal", "Upload failed")
        if request.headers.get("content-type") != "application/x-gzip":
            return _errors(400, "invalid-content-type", "Captures are uploaded as application/x-gzip")
        try:
            content = gzip.decompress(body)
        except (OSError, EOFError):
            return _errors(400, "invalid-gzip", "The body is not gzip")
        with self._lock:
            capture["status"] = "uploaded"
            self.uploads.append(Upload(capture["uri"], capture["modeler"], capture["capture_type"], body, content))
        return Response(None, status_code=204)


if __name__ == "__main__":
    args = arguments("An Authentise 3DIAX simulator (user demo@plant.local, password demo).")
    simulator = AuthentiseSimulator(users=dict([DEMO_USER]), port=args.port)
    simulator.add_modeler(ident=DEMO_MODELER, name="Demo Fortus 250")
    simulator.serve_forever()
