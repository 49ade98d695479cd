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
        """Machine resources, the dataflow's status, its services and the last delivery per transmit."""
        config = inst.config()
        running = inst.supervisor.status == "running"
        return ok({
            "backup": {"config": {
                "last_success": None, "error_code": "not_configured",
                "error_message": "factoryflow does not back files up to the Sight Machine cloud"}},
            "last_data_transmit": status.last_data_transmit(config, ledger),
            "machine_info": status.machine_info(inst.home),
            "factorytx": {"status": inst.supervisor.status,
                          "services": status.services(config, running, ledger),
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
