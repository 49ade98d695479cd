"""``/v1/config``, ``/v1/config/validate`` and ``/v1/config/templates[/<protocol>]``."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody

from api import status
from api.errors import InvalidConfig, ok, violations_json
from api.installation import Inst
from api.redaction import redacted
from api.supervisor import CannotStart
from api.templates import template_for, templates

_log = logging.getLogger("api")
EMPTY_CONFIG: dict[str, Any] = {"data_receiver": [], "transforms": [], "data_transmit": []}


class ConfigController(Controller):
    """The saved configuration: read (secrets redacted), validate, save, templates."""

    path = "/v1/config"

    @get("/", sync_to_thread=True, operation_id="get_config", summary="Read the configuration")
    def get_config(self, inst: Inst) -> Any:
        """The saved configuration, secrets redacted, with ``meta.last_modified`` (UTC)."""
        document = inst.document()
        return ok(redacted(document if document is not None else EMPTY_CONFIG),
                  meta={"last_modified": status.last_modified(inst.config_path)})

    @post("/", sync_to_thread=True, status_code=200, operation_id="post_config",
          summary="Validate and save the configuration")
    def post_config(self, data: JSONBody[dict[str, Any]], inst: Inst) -> Any:
        """Validate and save a configuration, then restart the dataflow if it is running.

        A ``"********"`` secret keeps the saved one. An invalid config is refused with its
        violations and the saved one is left untouched.
        """
        with inst.config_lock:
            document, violations = inst.check(data)
            if any(v.level == "error" for v in violations):
                raise InvalidConfig(violations)
            inst.save(document)
            _log.info("config saved to %s (%d warnings)", inst.config_path, len(violations))
            if inst.supervisor.wanted:
                try:
                    inst.supervisor.restart()
                except CannotStart as exc:
                    _log.error("the saved config cannot run, the dataflow stays down: %s", exc)
        return ok(redacted(document), meta={"last_modified": status.last_modified(inst.config_path),
                                          "violations": violations_json(violations)})

    @post("/validate", sync_to_thread=True, status_code=200, operation_id="post_validate",
          summary="Validate a configuration")
    def post_validate(self, data: JSONBody[dict[str, Any]], inst: Inst) -> Any:
        """The violations of a configuration: ``status`` ``passed`` (warnings at most) or ``failed``."""
        _, violations = inst.check(data)
        passed = not any(v.level == "error" for v in violations)
        body = {"violations": violations_json(violations), "status": "passed" if passed else "failed"}
        return ok(body) if passed else {"success": False, "response": body}

    @get("/templates", sync_to_thread=False, operation_id="get_templates",
         summary="List the configuration templates")
    def get_templates(self) -> Any:
        """Every configuration template: ``[{"configuration", "name", "description"}]``."""
        return ok([{**t, "configuration": redacted(t["configuration"])} for t in templates()])

    @get("/templates/{protocol:str}", sync_to_thread=False, operation_id="get_template",
         summary="Read the template of a receiver protocol")
    def get_template(self, protocol: FromPath[str]) -> Any:
        """The template for a receiver protocol (``opcua``, ``sql``, ...)."""
        found = template_for(protocol)
        if found is None:
            return {"response": "Requested configuration is not available", "success": False}
        return ok(redacted(found))
