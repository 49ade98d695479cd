"""FactoryTX's response wrapper, and every domain error mapped to HTTP in one place.

A ``/v1`` answer is ``{"success": true, "response": ...}``; a failure is
``{"success": false, "response": ..., "error": {"code", "text"}}``. Failures the contract
shows as ``success: false`` bodies (an invalid config, a dataflow that cannot start)
answer HTTP 200 as FactoryTX does; an unknown log or meta object is a 404; a failed
restream is a 500, as documented; other HTTP errors (a body too big, a missing API
key) carry their own status with the same wrapper.

Handlers raise; :func:`exception_handlers` turns each error into its answer:

=============================  ===========  ==========  ============================
error                          HTTP status  error.code  response
=============================  ===========  ==========  ============================
:class:`InvalidConfig`         200          400         violations, ``"failed"``
``ConfigError`` (saved file)   200          500         ``{}``
``CannotStart``                200          409         ``"failed"``
:class:`NotRunning`            200          500         the dataflow's status
:class:`UnknownLog`            404          404         ``[]``
``UnknownMeta``                404          404         ``{}``
:class:`RestreamFailed`        500 (400)    500 (400)   ``"Restream failed"``
``HTTPException``              its own      its own     ``{}``
anything else                  500          500         ``{}``, logged with traceback;
                                                        the text names no exception
=============================  ===========  ==========  ============================

Implements the wrapper of ``shared/specs/factorytx-rest-api.txt``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from api.meta import UnknownMeta
from api.supervisor import CannotStart
from dataflows.config import ConfigError, Violation

_log = logging.getLogger("api")


def ok(response: Any, **extra: Any) -> dict[str, Any]:
    """The success wrapper ``{"success": true, "response": ..., **extra}``."""
    return {"success": True, "response": response, **extra}


def failure(response: Any, code: int, text: str, status_code: int = 200) -> Response[dict[str, Any]]:
    """The failure wrapper ``{"success": false, "response", "error": {"code", "text"}}``."""
    return Response({"success": False, "response": response, "error": {"code": code, "text": text}},
                    status_code=status_code)


def violations_json(violations: list[Violation]) -> list[dict[str, Any]]:
    """Violations as JSON objects ``{description, json_path, level}``."""
    return [msgspec.to_builtins(v) for v in violations]


def violation_text(violations: list[Violation]) -> str:
    """The error-level violations in one line: ``json/path: description; ...``."""
    return "; ".join(str(v) for v in violations if v.level == "error")


class InvalidConfig(Exception):
    """A POSTed config has error-level violations; nothing was saved."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__(violation_text(violations))
        self.violations = violations


class NotRunning(Exception):
    """The dataflow did not reach ``running`` after a start; ``status`` is where it is."""

    def __init__(self, status: str) -> None:
        super().__init__("the dataflow did not start; see /v1/log/stream")
        self.status = status


class UnknownLog(LookupError):
    """No log of that name; the message lists the accepted names."""


class RestreamFailed(Exception):
    """A restream cannot be done (unknown names, no acknowledgement in time).

    :ivar status_code: 500 as documented, 400 for a request naming no stream.
    """

    def __init__(self, reason: str, status_code: int = 500) -> None:
        super().__init__(reason)
        self.status_code = status_code


Handler = Callable[[Request[Any, Any, Any], Exception], Response[dict[str, Any]]]


def _invalid(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, InvalidConfig)
    return failure({"violations": violations_json(exc.violations), "status": "failed"}, 400, str(exc))


def _unreadable(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, ConfigError)
    return failure({}, 500, violation_text(exc.violations))


def _cannot_start(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    _log.error("dataflow start refused: %s", exc)
    return failure("failed", 409, f"the saved config cannot run: {exc}")


def _not_running(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, NotRunning)
    return failure(exc.status, 500, str(exc))


def _not_found(response: Any) -> Handler:
    def handle(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
        return failure(response, 404, str(exc.args[0]) if exc.args else str(exc), status_code=404)
    return handle


def _restream(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, RestreamFailed)
    return failure("Restream failed", exc.status_code, str(exc), exc.status_code)


def _http(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, HTTPException)
    return failure({}, exc.status_code, str(exc.detail), status_code=exc.status_code)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    _log.exception("%s %s failed", request.method, request.url.path)
    return failure({}, 500, f"internal error in {request.method} {request.url.path}; the API's log "
                   "(GET /v1/log/stream/factorytx_web.log) has the details", status_code=500)


def exception_handlers() -> dict[type[Exception], Handler]:
    """The one mapping of errors to answers (see the module docstring's table)."""
    return {
        InvalidConfig: _invalid,
        ConfigError: _unreadable,
        CannotStart: _cannot_start,
        NotRunning: _not_running,
        UnknownLog: _not_found([]),
        UnknownMeta: _not_found({}),
        RestreamFailed: _restream,
        HTTPException: _http,
        Exception: _unexpected,
    }
