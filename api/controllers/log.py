"""``/v1/log/stream[/<log_filename>]``: the tail of the dataflow's and the API's logs."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get
from litestar.params import FromPath, QueryParameter

from api import status
from api.errors import UnknownLog, ok
from api.installation import Inst, Installation
from dataflows.home import CORE_LOG

LineCount = Annotated[int, QueryParameter(ge=1, le=10_000, description="Lines from the end of the log.")]


def _lines(inst: Installation, name: str, lines: int) -> list[str]:
    return [inst.redacting.scrub(line) for line in status.tail(inst.log_dir / name, lines)]


class LogController(Controller):
    """Log tails, secrets scrubbed; the file name is compared, never used as a path."""

    path = "/v1/log/stream"

    @get("/", sync_to_thread=True, operation_id="log_stream", summary="Tail the dataflow's log")
    def core(self, inst: Inst, lines: LineCount = 200) -> Any:
        """The tail of the dataflow's log (``factorytx_core.log``)."""
        return ok(_lines(inst, CORE_LOG, lines))

    @get("/{log_filename:str}", sync_to_thread=True, operation_id="log_stream_file",
         summary="Tail a log by name")
    def named(self, inst: Inst, log_filename: FromPath[str], lines: LineCount = 200) -> Any:
        """The tail of ``factorytx_core.log`` or ``factorytx_web.log``; any other name is a 404."""
        if log_filename not in status.LOG_FILES:
            raise UnknownLog(f"no log named {log_filename!r}; accepted: {', '.join(status.LOG_FILES)}")
        return ok(_lines(inst, log_filename, lines))
