"""``/v1/ftx/start``, ``/v1/ftx/stop`` and ``/v1/ftx/restart``: the dataflow process."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, post
from litestar.params import QueryParameter

from api.errors import NotRunning, ok
from api.installation import Inst, Installation

FreshState = Annotated[bool, QueryParameter(
    description="Start over although records were delivered before and the recovery state is gone.")]


def _control(inst: Installation, action: str, **options: Any) -> Any:
    with inst.config_lock:
        result = getattr(inst.supervisor, action)(**options)  # CannotStart: mapped in api.errors
    if action != "stop" and result != "running":
        raise NotRunning(result)
    return ok(result)


class FtxController(Controller):
    """Start, stop and restart the supervised dataflow."""

    path = "/v1/ftx"

    @post("/start", sync_to_thread=True, status_code=200, operation_id="ftx_start",
          summary="Start the dataflow")
    def start(self, inst: Inst, fresh_state: FreshState = False) -> Any:
        """Start the dataflow (``"running"``). ``?fresh_state=true`` starts over although
        records were delivered before and the recovery state is gone (every source is read
        again): what ``factoryflow run --fresh-state`` does; without it such a start fails
        with the line naming how much was delivered."""
        return _control(inst, "start", **({"fresh_state": True} if fresh_state else {}))

    @post("/stop", sync_to_thread=True, status_code=200, operation_id="ftx_stop",
          summary="Stop the dataflow")
    def stop(self, inst: Inst) -> Any:
        """Stop the dataflow gracefully (``"stopped"``)."""
        return _control(inst, "stop")

    @post("/restart", sync_to_thread=True, status_code=200, operation_id="ftx_restart",
          summary="Restart the dataflow")
    def restart(self, inst: Inst) -> Any:
        """Stop, then start the dataflow (``"running"``)."""
        return _control(inst, "restart")
