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
import threading
from pathlib import Path
from typing import Any

from litestar import Litestar, MediaType, Request, Response, get
from litestar.di import Provide
from litestar.exceptions import ClientException, NotAuthorizedException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.response import File, Stream
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

from api import status
from api.controllers import CONTROLLERS
from api.errors import Handler, exception_handlers
from api.installation import Installation, provide_control, provide_ledger
from api.limits import BodyRefused, check_body
from api.openapi import declare_errors
from api.rates import RecordRates
from api.redaction import request_secrets, scrub_content
from api.supervisor import CannotStart, Supervisor
from dataflows.config import ConfigError
from dataflows.ledger import Ledger, ledger_path
from dataflows.secrets import RedactingFilter, secret_values

_log = logging.getLogger("api")

#: Largest request body accepted, in bytes (``FACTORYFLOW_API_MAX_BODY``).
MAX_BODY = int(os.environ.get("FACTORYFLOW_API_MAX_BODY", 1024 * 1024))


#: Where Swagger UI's files (from the swagger-ui-bundle-v2 package) are served: no CDN.
SCHEMA_ASSETS = "/schema/assets"
#: The web UI's files (``api/ui``: the page, its script and style, the vendored editor).
UI_DIR = Path(__file__).resolve().parent / "ui"


def ui_shell(path: str) -> bool:
    """Whether ``path`` is the web UI's page or one of its files: served without the API
    key (they hold no data; every ``/v1`` call the page makes carries the key)."""
    return path == "/" or path.startswith("/ui/")


@get("/", include_in_schema=False, media_type=MediaType.HTML, sync_to_thread=False)
def ui_page() -> File:
    """The web UI (docs/ui.md)."""
    return File(UI_DIR / "index.html", content_disposition_type="inline", media_type=MediaType.HTML)


def openapi_config() -> OpenAPIConfig:
    """OpenAPI at ``/schema/openapi.json`` and Swagger UI at ``/schema``, every asset served
    by factoryflow itself, so the page works in a plant without internet."""
    swagger = SwaggerRenderPlugin(
        path="/", js_url=f"{SCHEMA_ASSETS}/swagger-ui-bundle.js", css_url=f"{SCHEMA_ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{SCHEMA_ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{SCHEMA_ASSETS}/favicon-32x32.png'>")
    return OpenAPIConfig(title="factoryflow control API", version="1.0.0", path="/schema",
                         render_plugins=[swagger, JsonRenderPlugin()])


def create_app(home: Path, *, supervisor: Supervisor | None = None, api_key: str | None = None,
               restream_timeout: float = 60.0, autostart: bool = False,
               redacting: RedactingFilter | None = None, max_body: int = MAX_BODY,
               rate_interval: float = 60.0) -> Litestar:
    """The control API of the installation at ``home``.

    :param api_key: when set, every request needs it in ``X-API-Key`` (401 otherwise).
    :param restream_timeout: seconds a restream waits for every stream's acknowledgement.
    :param autostart: start the dataflow when the API starts, if a config is saved.
    :param redacting: the web log's secret filter, kept in step with the saved config.
    :param max_body: largest request body in bytes (413 beyond).
    :param rate_interval: seconds between samples of the records-per-minute history
        (:mod:`api.rates`).
    """
    home.mkdir(parents=True, exist_ok=True)
    inst = Installation(home, supervisor or Supervisor(home), restream_timeout, redacting,
                        RecordRates(rate_interval))
    sampling = threading.Event()
    with contextlib.suppress(ConfigError):  # an unreadable config has no secrets to scrub yet
        inst.redacting.use(inst.document())

    async def before_request(request: Request[Any, Any, Any]) -> None:
        if api_key and not ui_shell(request.url.path) \
                and not hmac.compare_digest(request.headers.get("x-api-key", ""), api_key):
            raise NotAuthorizedException("missing or wrong X-API-Key")
        if request.method in ("POST", "PUT"):  # whatever its content type, the handler decodes JSON
            try:
                document = check_body(await request.body())  # cached: the handler decodes the same bytes
            except BodyRefused as exc:
                raise ClientException(str(exc)) from None
            request_secrets.set(frozenset(secret_values(document)))

    def scrubbed(response: Response[Any]) -> Response[Any]:
        if isinstance(response, Response) and not isinstance(response, (File, Stream)):  # not a file
            response.content = scrub_content(response.content, inst.redacting.secrets | request_secrets.get())
        return response

    async def after_request(response: Response[Any]) -> Response[Any]:
        return scrubbed(response)

    def scrubbing(handler: Handler) -> Handler:
        return lambda request, exc: scrubbed(handler(request, exc))

    def startup() -> None:
        threading.Thread(target=status.cpu_percent, name="cpu-sample", daemon=True).start()  # first reading: 1 s
        threading.Thread(target=inst.rates.run, args=(lambda: Ledger(ledger_path(home)), sampling),
                         name="record-rates", daemon=True).start()
        if autostart and inst.config_path.exists():
            try:
                inst.supervisor.start()
            except CannotStart as exc:
                _log.error("the saved config cannot run, the dataflow stays down: %s", exc)

    def provide_installation() -> Installation:
        return inst

    app = Litestar(
        route_handlers=[*CONTROLLERS, ui_page, create_static_files_router(
            path=SCHEMA_ASSETS, directories=[swagger_ui_path], include_in_schema=False),
            create_static_files_router(path="/ui", directories=[UI_DIR], include_in_schema=False)],
        dependencies={
            "inst": Provide(provide_installation, sync_to_thread=False),
            "ledger": Provide(provide_ledger),
            "control": Provide(provide_control),
        },
        before_request=before_request,
        after_request=after_request,
        on_startup=[startup],
        on_shutdown=[inst.supervisor.close, sampling.set],
        exception_handlers={error: scrubbing(handler)  # type: ignore[misc]
                            for error, handler in exception_handlers().items()},
        request_max_body_size=max_body,
        logging_config=None,  # logging is configured by python -m api (FactoryTX line format)
        openapi_config=openapi_config(),
    )
    declare_errors(app.openapi_schema)
    return app
