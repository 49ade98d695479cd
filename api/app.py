"""The control API: FactoryTX's ``/v1/...`` endpoints on Litestar, plus ``/metrics`` and ``/schema``.

Every ``/v1`` response is FactoryTX's wrapper ``{"success", "response"}`` (with
``"error": {"code", "text"}`` on failures), in JSON. Failures the contract shows as
``success: false`` bodies (an invalid config, an unknown template, a dataflow that
cannot start) answer HTTP 200 as FactoryTX does; an unknown log name is a 404; a failed
restream is a 500, as documented; other HTTP errors (a body too big, a missing API key)
carry their own status with the same wrapper.

Implements ``shared/specs/factorytx-rest-api.txt``; see ``docs/api.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api import meta, status
from api.supervisor import CannotStart, Supervisor
from api.templates import template_for, templates
from dataflows.config import Config, ConfigError, Violation, load, read_document, validate
from dataflows.control import ControlStore, control_path
from dataflows.ledger import Ledger, ledger_path
from dataflows.secrets import RedactingFilter, redact, restore_secrets

_log = logging.getLogger("api")

#: Largest request body accepted, in bytes (``FACTORYFLOW_API_MAX_BODY``).
MAX_BODY = int(os.environ.get("FACTORYFLOW_API_MAX_BODY", 1024 * 1024))
EMPTY_CONFIG: dict[str, Any] = {"data_receiver": [], "transforms": [], "data_transmit": []}


class StreamRef(msgspec.Struct, forbid_unknown_fields=True):
    """A stream named in a restream request."""

    asset: str
    stream_type: str


def ok(response: Any, **extra: Any) -> dict[str, Any]:
    """The success wrapper."""
    return {"success": True, "response": response, **extra}


def failure(response: Any, code: int, text: str, status_code: int = 200) -> Response[dict[str, Any]]:
    """The failure wrapper ``{"success": false, "response", "error": {"code", "text"}}``."""
    return Response({"success": False, "response": response, "error": {"code": code, "text": text}},
                    status_code=status_code)


def _violations(violations: list[Violation]) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(v) for v in violations]


def _violation_text(violations: list[Violation]) -> str:
    return "; ".join(f"{'/'.join(map(str, v.json_path)) or '<root>'}: {v.description}"
                     for v in violations if v.level == "error")


class Installation:
    """The state the endpoints share: the home, the supervisor, the config lock.

    :param home: ``$FACTORYFLOW_HOME``.
    :param restream_timeout: seconds ``POST /v1/restream`` waits for every stream's
        acknowledgement before answering 500.
    """

    def __init__(self, home: Path, supervisor: Supervisor, restream_timeout: float,
                 redacting: RedactingFilter | None) -> None:
        self.home = home
        self.supervisor = supervisor
        self.restream_timeout = restream_timeout
        self.config_lock = threading.Lock()
        self.redacting = redacting or RedactingFilter()

    @property
    def config_path(self) -> Path:
        """Where the config is saved (the dataflow reads the same file)."""
        return self.supervisor.config_path

    def document(self) -> Any | None:
        """The saved config document, or None when there is none.

        :raises ConfigError: unreadable or not JSON.
        """
        if not self.config_path.exists():
            return None
        return read_document(self.config_path)

    def check(self, document: Any) -> tuple[Any, list[Violation]]:
        """``document`` with its ``"********"`` secrets restored from the saved config, and
        every violation of the result (the restore's and validation's)."""
        try:
            stored = self.document()
        except ConfigError:
            stored = None
        document, violations = restore_secrets(document, stored)
        return document, violations + validate(document)

    def config(self) -> Config | None:
        """The saved config, typed (placeholders allowed), or None when missing or invalid."""
        try:
            document = self.document()
            return None if document is None else load(document, runnable=False)
        except ConfigError:
            return None

    def save(self, document: Any) -> None:
        """Write ``document`` atomically (temp file, fsync, rename, fsync of the directory)."""
        path = self.config_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.redacting.use(document)

    def ledger(self) -> Ledger:
        """A new connection to the installation's ledger; close it after use."""
        return Ledger(ledger_path(self.home))


# --------------------------------------------------------------------------- config


@get("/v1/config", sync_to_thread=True, operation_id="get_config")
def get_config(state: State) -> Any:
    """The saved configuration, secrets redacted, with ``meta.last_modified`` (UTC)."""
    inst: Installation = state.inst
    try:
        document = inst.document()
    except ConfigError as exc:
        return failure({}, 500, _violation_text(exc.violations))
    return ok(redact(document if document is not None else EMPTY_CONFIG),
              meta={"last_modified": status.last_modified(inst.config_path)})


@post("/v1/config", sync_to_thread=True, status_code=200, operation_id="post_config")
def post_config(data: JSONBody[dict[str, Any]], state: State) -> Any:
    """Validate and save a configuration, then restart the dataflow if it is running.

    A ``"********"`` secret keeps the saved one. An invalid config is refused with its
    violations and the saved one is left untouched.
    """
    inst: Installation = state.inst
    with inst.config_lock:
        document, violations = inst.check(data)
        if any(v.level == "error" for v in violations):
            return failure({"violations": _violations(violations), "status": "failed"}, 400,
                           _violation_text(violations))
        inst.save(document)
        _log.info("config saved to %s (%d warnings)", inst.config_path, len(violations))
        if inst.supervisor.wanted:
            try:
                inst.supervisor.restart()
            except CannotStart as exc:
                _log.error("the saved config cannot run, the dataflow stays down: %s", exc)
    return ok(redact(document), meta={"last_modified": status.last_modified(inst.config_path),
                                      "violations": _violations(violations)})


@post("/v1/config/validate", sync_to_thread=True, status_code=200, operation_id="post_validate")
def post_validate(data: JSONBody[dict[str, Any]], state: State) -> Any:
    """The violations of a configuration: ``status`` ``passed`` (warnings at most) or ``failed``."""
    document, violations = state.inst.check(data)
    passed = not any(v.level == "error" for v in violations)
    body = {"violations": _violations(violations), "status": "passed" if passed else "failed"}
    return ok(body) if passed else {"success": False, "response": body}


@get("/v1/config/templates", sync_to_thread=False, operation_id="get_templates")
def get_templates() -> Any:
    """Every configuration template: ``[{"configuration", "name", "description"}]``."""
    return ok([{**t, "configuration": redact(t["configuration"])} for t in templates()])


@get("/v1/config/templates/{protocol:str}", sync_to_thread=False, operation_id="get_template")
def get_template(protocol: FromPath[str]) -> Any:
    """The template for a receiver protocol (``opcua``, ``sql``, ...)."""
    found = template_for(protocol)
    if found is None:
        return {"response": "Requested configuration is not available", "success": False}
    return ok(redact(found))


# --------------------------------------------------------------------------- process control


def _control(inst: Installation, action: str) -> Any:
    with inst.config_lock:
        try:
            result = getattr(inst.supervisor, action)()
        except CannotStart as exc:
            _log.error("dataflow %s refused: %s", action, exc)
            return failure("failed", 409, f"the saved config cannot run: {exc}")
    if action != "stop" and result != "running":
        return failure(result, 500, "the dataflow did not start; see /v1/log/stream")
    return ok(result)


@post("/v1/ftx/start", sync_to_thread=True, status_code=200, operation_id="ftx_start")
def ftx_start(state: State) -> Any:
    """Start the dataflow (``"running"``)."""
    return _control(state.inst, "start")


@post("/v1/ftx/stop", sync_to_thread=True, status_code=200, operation_id="ftx_stop")
def ftx_stop(state: State) -> Any:
    """Stop the dataflow gracefully (``"stopped"``)."""
    return _control(state.inst, "stop")


@post("/v1/ftx/restart", sync_to_thread=True, status_code=200, operation_id="ftx_restart")
def ftx_restart(state: State) -> Any:
    """Stop, then start the dataflow (``"running"``)."""
    return _control(state.inst, "restart")


# --------------------------------------------------------------------------- logs, meta, status


LineCount = Annotated[int, QueryParameter(ge=1, le=10_000, description="Lines from the end of the log.")]


def _log_lines(inst: Installation, name: str, lines: int) -> list[str]:
    return [inst.redacting.scrub(line) for line in status.tail(inst.home / "log" / name, lines)]


@get("/v1/log/stream", sync_to_thread=True, operation_id="log_stream")
def log_stream(state: State, lines: LineCount = 200) -> Any:
    """The tail of the dataflow's log (``factorytx_core.log``)."""
    return ok(_log_lines(state.inst, "factorytx_core.log", lines))


@get("/v1/log/stream/{log_filename:str}", sync_to_thread=True, operation_id="log_stream_file")
def log_stream_file(state: State, log_filename: FromPath[str], lines: LineCount = 200) -> Any:
    """The tail of ``factorytx_core.log`` or ``factorytx_web.log``; any other name is a 404."""
    if log_filename not in status.LOG_FILES:
        return failure([], 404, f"no log named {log_filename!r}; accepted: "
                       f"{', '.join(status.LOG_FILES)}", status_code=404)
    return ok(_log_lines(state.inst, log_filename, lines))


@get("/v1/meta", sync_to_thread=False, operation_id="get_meta")
def get_meta() -> Any:
    """Which objects and subtypes exist (deprecated in FactoryTX)."""
    return ok(meta.objects())


@get("/v1/meta/{object_id:str}", sync_to_thread=False, operation_id="get_meta_object")
def get_meta_object(object_id: FromPath[str], subtype: FromQuery[str | None] = None) -> Any:
    """Schema and empty template of one object subtype (deprecated in FactoryTX)."""
    try:
        return ok(meta.describe_object(object_id, subtype))
    except meta.UnknownMeta as exc:
        return failure({}, 404, str(exc), status_code=404)


@get("/v1/status", sync_to_thread=True, operation_id="get_status")
def get_status(state: State) -> Any:
    """Machine resources, the dataflow's status, its services and the last delivery per transmit."""
    inst: Installation = state.inst
    config = inst.config()
    ledger = inst.ledger()
    try:
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
    finally:
        ledger.close()


@get("/v1/streams", sync_to_thread=True, operation_id="get_streams")
def get_streams(state: State) -> Any:
    """Every configured stream with its warning and error markers."""
    inst: Installation = state.inst
    ledger = inst.ledger()
    try:
        return ok(status.streams(inst.config(), ledger))
    finally:
        ledger.close()


# --------------------------------------------------------------------------- restream


@post("/v1/restream", status_code=200, operation_id="post_restream", responses={
    500: ResponseSpec(data_container=dict[str, Any], description=(
        "Restream failed: unknown receiver or stream, or no acknowledgement in time; "
        "error.text gives the reason"))})
async def post_restream(data: JSONBody[dict[str, list[StreamRef]]], state: State) -> Any:
    """Restream the named streams from the start (SQL state back to ``initial_value``, file
    receivers re-read what is there); answers once every stream has applied it.

    HTTP 500 with the reason for an unknown receiver or stream, or when a stream does not
    acknowledge within the timeout. Requested while the dataflow is stopped, it applies at
    the next start.
    """
    inst: Installation = state.inst
    config = await asyncio.to_thread(inst.config)
    if config is None:
        return failure("Restream failed", 500, "there is no valid saved configuration", 500)
    known = {r.data_receiver_name: {str(s.key) for s in r.stream_list} for r in config.data_receiver}
    wanted: list[tuple[str, str]] = []
    for receiver, refs in data.items():
        if receiver not in known:
            return failure("Restream failed", 500, f"unknown data receiver {receiver!r}", 500)
        for ref in refs:
            key = f"{ref.asset}:{ref.stream_type}"
            if key not in known[receiver]:
                return failure("Restream failed", 500,
                               f"receiver {receiver!r} has no stream {key!r}", 500)
            wanted.append((receiver, key))
    if not wanted:
        return failure("Restream failed", 400, "the request names no stream", 400)

    def request() -> int:
        store = ControlStore(control_path(inst.home))
        try:
            return store.request_restream(wanted)
        finally:
            store.close()

    request_id = await asyncio.to_thread(request)
    _log.info("restream request %d: %s", request_id, ", ".join(f"{r} {s}" for r, s in wanted))
    if inst.supervisor.status != "running":
        return ok("Restream is scheduled: it applies when the dataflow starts")
    waiting = await asyncio.to_thread(_await_applied, inst, wanted, request_id)
    if waiting:
        return failure("Restream failed", 500, f"no acknowledgement within {inst.restream_timeout:g} s "
                       f"from {', '.join(f'{r} {s}' for r, s in waiting)}; it applies when they "
                       "next poll", 500)
    _log.info("restream request %d applied by every stream", request_id)
    return ok("Restream has completed successfully")


def _await_applied(inst: Installation, wanted: list[tuple[str, str]],
                   request_id: int) -> list[tuple[str, str]]:
    store = ControlStore(control_path(inst.home))
    try:
        deadline = time.monotonic() + inst.restream_timeout
        while True:
            waiting = [(r, s) for r, s in wanted if store.applied(r, s) < request_id]
            if not waiting or time.monotonic() > deadline:
                return waiting
            time.sleep(0.1)
    finally:
        store.close()


# --------------------------------------------------------------------------- metrics, safety


@get("/metrics", media_type=MediaType.TEXT, sync_to_thread=True, operation_id="metrics")
def metrics(state: State) -> Response[bytes]:
    """Prometheus metrics (text exposition format)."""
    registry = CollectorRegistry()
    registry.register(status.LedgerCollector(state.inst.home, state.inst.supervisor))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    return failure({}, exc.status_code, str(exc.detail), status_code=exc.status_code)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    _log.exception("%s %s failed", request.method, request.url.path)
    return failure({}, 500, f"{type(exc).__name__}: {exc}", status_code=500)


def create_app(home: Path, *, supervisor: Supervisor | None = None, api_key: str | None = None,
               restream_timeout: float = 60.0, autostart: bool = False,
               redacting: RedactingFilter | None = None, max_body: int = MAX_BODY) -> Litestar:
    """The control API of the installation at ``home``.

    :param api_key: when set, every request needs it in ``X-API-Key`` (401 otherwise).
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

    def shutdown() -> None:
        inst.supervisor.close()

    return Litestar(
        route_handlers=[get_config, post_config, post_validate, get_templates, get_template, ftx_start,
                        ftx_stop, ftx_restart, log_stream, log_stream_file, get_meta, get_meta_object,
                        get_status, get_streams, post_restream, metrics],
        state=_state(inst),
        before_request=check_key,
        on_startup=[startup],
        on_shutdown=[shutdown],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
        request_max_body_size=max_body,
        logging_config=None,  # logging is configured by python -m api (FactoryTX line format)
        openapi_config=OpenAPIConfig(title="factoryflow control API", version="1.0.0", path="/schema"),
    )


def _state(inst: Installation) -> State:
    return State({"inst": inst})
