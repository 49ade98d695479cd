"""``POST /v1/restream``: streams back to their start, online, through the control store."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from litestar import Controller, post
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody

from api.errors import RestreamFailed, ok
from api.installation import ControlConnection, Inst
from dataflows.control import ControlStore

_log = logging.getLogger("api")


class StreamRef(msgspec.Struct, forbid_unknown_fields=True):
    """A stream named in a restream request."""

    asset: str
    stream_type: str


def _await_applied(store: ControlStore, wanted: list[tuple[str, str]], request_id: int,
                   timeout: float) -> list[tuple[str, str]]:
    """The streams that have not applied ``request_id`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = [(r, s) for r, s in wanted if store.applied(r, s) < request_id]
        if not waiting or time.monotonic() > deadline:
            return waiting
        time.sleep(0.1)


class RestreamController(Controller):
    """Restream requests; see :mod:`dataflows.control` for how streams apply them."""

    path = "/v1/restream"

    @post("/", status_code=200, operation_id="post_restream", summary="Restream streams", responses={
        500: ResponseSpec(data_container=dict[str, Any], description=(
            "Restream failed: unknown receiver or stream, or no acknowledgement in time; "
            "error.text gives the reason"))})
    async def restream(self, data: JSONBody[dict[str, list[StreamRef]]], inst: Inst,
                       control: ControlConnection) -> Any:
        """Restream the named streams from the start (SQL state back to ``initial_value``, file
        receivers re-read what is there); answers once every stream has applied it.

        HTTP 500 with the reason for an unknown receiver or stream, or when a stream does not
        acknowledge within the timeout. Requested while the dataflow is stopped, it applies at
        the next start.
        """
        config = await asyncio.to_thread(inst.config)
        if config is None:
            raise RestreamFailed("there is no valid saved configuration")
        known = {r.data_receiver_name: {str(s.key) for s in r.stream_list} for r in config.data_receiver}
        wanted: list[tuple[str, str]] = []
        for receiver, refs in data.items():
            if receiver not in known:
                raise RestreamFailed(f"unknown data receiver {receiver!r}")
            for ref in refs:
                key = f"{ref.asset}:{ref.stream_type}"
                if key not in known[receiver]:
                    raise RestreamFailed(f"receiver {receiver!r} has no stream {key!r}")
                wanted.append((receiver, key))
        if not wanted:
            raise RestreamFailed("the request names no stream", 400)
        request_id = await asyncio.to_thread(control.request_restream, wanted)
        _log.info("restream request %d: %s", request_id, ", ".join(f"{r} {s}" for r, s in wanted))
        if inst.supervisor.status != "running":
            return ok("Restream is scheduled: it applies when the dataflow starts")
        waiting = await asyncio.to_thread(_await_applied, control, wanted, request_id,
                                          inst.restream_timeout)
        if waiting:
            raise RestreamFailed(f"no acknowledgement within {inst.restream_timeout:g} s from "
                                 f"{', '.join(f'{r} {s}' for r, s in waiting)}; it applies when they "
                                 "next poll")
        _log.info("restream request %d applied by every stream", request_id)
        return ok("Restream has completed successfully")
