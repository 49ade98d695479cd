"""The control API: FactoryTX's ``/v1/...`` endpoints on Litestar, plus ``/metrics`` and ``/schema``.

One controller per resource (:mod:`api.controllers`); the :class:`~api.installation.Installation`
and per-request ledger and control-store connections are dependencies (closed after the
request); domain errors become HTTP answers in one place (:mod:`api.errors`).

Implements ``shared/specs/factorytx-rest-api.txt``; see ``docs/api.md``.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from pathlib import Path
from typing import Any

from litestar import Litestar, Request
from litestar.di import Provide
from litestar.exceptions import NotAuthorizedException
from litestar.openapi import OpenAPIConfig

from api import status
from api.controllers import CONTROLLERS
from api.errors import exception_handlers
from api.installation import Installation, provide_control, provide_ledger
from api.supervisor import CannotStart, Supervisor
from dataflows.config import ConfigError
from dataflows.secrets import RedactingFilter

_log = logging.getLogger("api")

#: Largest request body accepted, in bytes (``FACTORYFLOW_API_MAX_BODY``).
MAX_BODY = int(os.environ.get("FACTORYFLOW_API_MAX_BODY", 1024 * 1024))


def create_app(home: Path, *, supervisor: Supervisor | None = None, api_key: str | None = None,
               restream_timeout: float = 60.0, autostart: bool = False,
               redacting: RedactingFilter | None = None, max_body: int = MAX_BODY) -> Litestar:
    """The control API of the installation at ``home``.

    :param api_key: when set, every request needs it in ``X-API-Key`` (401 otherwise).
    :param restream_timeout: seconds a restream waits for every stream's acknowledgement.
    :param autostart: start the dataflow when the API starts, if a config is saved.
    :param redacting: the web log's secret filter, kept in step with the saved config.
    :param max_body: largest request body in bytes (413 beyond).
    """
    home.mkdir(parents=True, exist_ok=True)
    inst = Installation(home, supervisor or Supervisor(home), restream_timeout, redacting)
    with contextlib.suppress(ConfigError):  # an unreadable config has no secrets to scrub yet
        inst.redacting.use(inst.document())

    def check_key(request: Request[Any, Any, Any]) -> None:
        if api_key and not hmac.compare_digest(request.headers.get("x-api-key", ""), api_key):
            raise NotAuthorizedException("missing or wrong X-API-Key")

    def startup() -> None:
        status.machine_info(home)  # the first cpu_percent() reading is meaningless; take it now
        if autostart and inst.config_path.exists():
            try:
                inst.supervisor.start()
            except CannotStart as exc:
                _log.error("the saved config cannot run, the dataflow stays down: %s", exc)

    def provide_installation() -> Installation:
        return inst

    return Litestar(
        route_handlers=CONTROLLERS,
        dependencies={
            "inst": Provide(provide_installation, sync_to_thread=False),
            "ledger": Provide(provide_ledger),
            "control": Provide(provide_control),
        },
        before_request=check_key,
        on_startup=[startup],
        on_shutdown=[inst.supervisor.close],
        exception_handlers=exception_handlers(),  # type: ignore[arg-type]
        request_max_body_size=max_body,
        logging_config=None,  # logging is configured by python -m api (FactoryTX line format)
        openapi_config=OpenAPIConfig(title="factoryflow control API", version="1.0.0", path="/schema"),
    )
