"""``/v1/status`` and the Prometheus ``/metrics``."""

from __future__ import annotations

from typing import Any

from litestar import Controller, MediaType, Response, get
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api import status
from api.errors import ok
from api.installation import Inst, LedgerConnection


class StatusController(Controller):
    """Machine resources, the dataflow's state, its services and the last deliveries."""

    path = "/v1/status"

    @get("/", sync_to_thread=True, operation_id="get_status", summary="Read the status")
    def get_status(self, inst: Inst, ledger: LedgerConnection) -> Any:
        """Machine resources, the dataflow's status, its services and the last delivery per
        transmit. What comes from the ledger and the machine is at most 1 s old; the
        dataflow's status and process are read at each request."""
        config = inst.config()
        state = inst.supervisor.status
        ledger_part = inst.answer("status", lambda: {
            "last_data_transmit": status.last_data_transmit(config, ledger),
            "machine_info": status.machine_info(inst.home),
            "services": status.services(config, ledger)})
        return ok({
            "backup": {"config": {
                "last_success": None, "error_code": "not_configured",
                "error_message": "factoryflow does not back files up to the Sight Machine cloud"}},
            "last_data_transmit": ledger_part["last_data_transmit"],
            "machine_info": ledger_part["machine_info"],
            "factorytx": {"status": state,
                          "services": status.with_state(ledger_part["services"], state == "running"),
                          "process": inst.supervisor.info()},
        })


class MetricsController(Controller):
    """Prometheus metrics, read from the ledger at each scrape."""

    path = "/metrics"

    @get("/", media_type=MediaType.TEXT, sync_to_thread=True, operation_id="metrics",
         summary="Prometheus metrics")
    def metrics(self, inst: Inst) -> Response[bytes]:
        """Prometheus metrics (text exposition format)."""
        registry = CollectorRegistry()
        registry.register(status.LedgerCollector(inst.home, inst.supervisor))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
