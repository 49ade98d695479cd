"""``/v1/streams``: every configured stream with its markers."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get

from api import status
from api.errors import ok
from api.installation import Inst, LedgerConnection


class StreamsController(Controller):
    """The configured streams and their warning and error markers."""

    path = "/v1/streams"

    @get("/", sync_to_thread=True, operation_id="get_streams", summary="List the streams")
    def get_streams(self, inst: Inst, ledger: LedgerConnection) -> Any:
        """Every configured stream with its warning and error markers (at most 1 s old)."""
        return ok(inst.answer("streams", lambda: status.streams(inst.config(), ledger, inst.rates)))
