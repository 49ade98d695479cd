"""A Sight Machine ingest simulator: the RDPv2 sslog endpoint, faithful to the digest.

``shared/specs/factorytx-digest.md`` (Transmits): ``PUT {base_url}/v1/rdp2/sslogs``,
multipart field ``sslog`` holding the gzip of concatenated BSON sslogs, headers
``X-SM-API-Key-ID`` and ``X-SM-API-Key``. The simulator checks both headers (401 when
wrong), un-gzips and decodes the BSON (``application/x-ndjson`` parts: JSON lines, for the
transmit's ``format: json``), stores the sslogs and every post, and can be told to answer
503, to hang, or to drop the connection.

It runs in the test's own process (uvicorn in a thread) on 127.0.0.1 and a free port, so a
test changes ``mode`` directly and reads ``sslogs`` and ``posts``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import bson
from litestar import Litestar, Request, Response, put
from litestar.types import ASGIApp, Receive, Scope, Send

from tests.services.process import free_port
from tests.simulators._serve import Simulator, arguments

Mode = Literal["ok", "503", "hang", "drop"]


@dataclass
class Post:
    """One accepted post: the decompressed part, its media type and what it decoded to."""

    media_type: str
    compressed_size: int
    payload: bytes
    sslogs: list[dict[str, Any]]


@dataclass
class Attempt:
    """One request as it arrived: when (monotonic seconds) and what it was answered."""

    at: float
    status: int | str


@dataclass
class SightMachineSimulator(Simulator):
    """The simulated endpoint; ``start()`` it, point a transmit at ``base_url`` (serving,
    stopping and ``base_url`` are :class:`~tests.simulators._serve.Simulator`'s).

    :ivar mode: ``ok`` stores and answers 200; ``503`` answers 503; ``hang`` answers
        nothing for ``hang_seconds``; ``drop`` reads the request and closes the connection
        mid-answer. Changeable at any time.
    :ivar keep: store every post and its sslogs (tests read them); ``False`` decodes and
        counts them in ``accepted`` only, for long runs (the bench).
    """

    api_key_id: str = "factory-edge"
    api_key: str = "s3cret"
    mode: Mode = "ok"
    hang_seconds: float = 3600.0
    keep: bool = True
    accepted: int = 0
    posts: list[Post] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    name = "sight-machine"
    log_level = "critical"  # the drop mode's aborted answers are expected

    def __post_init__(self) -> None:
        Simulator.__init__(self, self.port)

    @property
    def sslogs(self) -> list[dict[str, Any]]:
        """Every stored sslog, in arrival order."""
        with self._lock:
            return [s for post in self.posts for s in post.sslogs]

    def transmit(self, **overrides: Any) -> dict[str, Any]:
        """A ``remotedatapost`` transmit entry posting here."""
        return {"transmit_name": "sight_machine", "transmit_type": "remotedatapost",
                "base_url": self.base_url, "API_key_ID": self.api_key_id, "API_key": self.api_key,
                "poll_interval": 0.2, "timeout": 5, **overrides}

    def app(self) -> Litestar:
        """The Litestar app (one route) wrapped in the connection-dropping middleware."""

        @put("/v1/rdp2/sslogs", status_code=200)
        async def ingest(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
            if self.mode == "hang":
                await asyncio.sleep(self.hang_seconds)
            if self.mode == "503":
                return self._answer(503, {"error": "service unavailable"})
            if (request.headers.get("X-SM-API-Key-ID") != self.api_key_id
                    or request.headers.get("X-SM-API-Key") != self.api_key):
                return self._answer(401, {"error": "invalid API key"})
            form = await request.form()
            part = form.get("sslog")
            if part is None or isinstance(part, str):
                return self._answer(400, {"error": "multipart field 'sslog' is missing"})
            compressed = await part.read()
            try:
                payload = gzip.decompress(compressed)
                if part.content_type == "application/x-ndjson":
                    sslogs = [json.loads(line) for line in payload.splitlines() if line]
                else:
                    sslogs = bson.decode_all(payload)
            except (OSError, ValueError, bson.errors.InvalidBSON) as exc:
                return self._answer(400, {"error": f"undecodable sslog part: {exc}"})
            with self._lock:
                self.accepted += len(sslogs)
                if self.keep:
                    self.posts.append(Post(part.content_type, len(compressed), payload, sslogs))
            return self._answer(200, {"accepted": len(sslogs)})

        def drop(app: ASGIApp) -> ASGIApp:
            async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] == "http" and self.mode == "drop":
                    while (await receive()).get("more_body"):
                        pass
                    self.attempts.append(Attempt(time.monotonic(), "dropped"))
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [(b"content-length", b"100")]})
                    raise ConnectionAbortedError("simulator drops the connection")
                await app(scope, receive, send)
            return middleware

        return Litestar(route_handlers=[ingest], middleware=[drop], debug=False)

    def _answer(self, status: int, body: dict[str, Any]) -> Response[dict[str, Any]]:
        self.attempts.append(Attempt(time.monotonic(), status))
        return Response(body, status_code=status)


if __name__ == "__main__":
    args = arguments("A Sight Machine RDPv2 sslog endpoint that decodes and counts what it accepts.")
    SightMachineSimulator(port=args.port, keep=False).serve_forever()
