"""Configuration templates served by ``GET /v1/config/templates[/<protocol>]``, generated
from the registry: "Basic" (no components), then one per receiver protocol, each from
the receiver's own ``template`` (:class:`~dataflows.sdk.Template`) with the default
transmit's (``remotedatapost``) template entry.

The receivers FactoryTX documents come first, in the order of
``shared/specs/factorytx-rest-api.txt`` (Localfile, SMB, SQL, OPCUA; the SMB one with
the document's missing comma restored); the others follow by protocol. Each template
validates with warnings only (its ``<Please ...>`` placeholders).
"""

from __future__ import annotations

import copy
from typing import Any

from dataflows import registry

BASIC: dict[str, Any] = {
    "configuration": {"data_receiver": [], "transforms": [], "data_transmit": []},
    "name": "Basic",
    "description": "A basic template without data_receiver, transforms, and data_transmit settings",
}
#: The receivers of FactoryTX's documented templates, in the document's order.
DOCUMENTED_ORDER = ("localfile", "smb", "sql", "opcua")


def templates() -> list[dict[str, Any]]:
    """Every template (new copies): ``{"configuration", "name", "description"}``."""
    transmit_cls = registry.transmits.get(registry.transmits.default_tag or "")
    transmits = [transmit_cls.template] if transmit_cls and transmit_cls.template else []
    receivers = [cls for cls in registry.receivers.structs() if cls.template is not None]
    receivers.sort(key=lambda cls: (DOCUMENTED_ORDER.index(cls.tag()) if cls.tag() in DOCUMENTED_ORDER
                                    else len(DOCUMENTED_ORDER), cls.tag()))
    out = [BASIC]
    for cls in receivers:
        template = cls.template
        out.append({
            "configuration": {"data_receiver": [template.receiver], "transforms": template.transforms,
                              "data_transmit": transmits},
            "name": template.name,
            "description": template.description,
        })
    return copy.deepcopy(out)


def template_for(protocol: str) -> dict[str, Any] | None:
    """The configuration of the template for ``protocol`` (a receiver protocol such as
    ``opcua``, or a template name such as ``basic``; case-insensitive), or None."""
    wanted = protocol.lower()
    for template in templates():
        protocols = {r["protocol"] for r in template["configuration"]["data_receiver"]}
        if wanted in protocols or wanted == template["name"].lower().replace(" ", "_"):
            return template["configuration"]
    return None
