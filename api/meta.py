"""``GET /v1/meta`` and ``GET /v1/meta/<object_id>?subtype=`` (deprecated in FactoryTX, kept
for compatibility), generated from the component registries and their msgspec Structs,
so a new connector appears here without editing the API.

Object ids: ``data_receiver``, ``data_receiver_asset`` (a receiver's stream),
``data_transmit``, ``transforms`` and ``parsers``; subtypes are the registered tags
(``protocol``, ``transmit_type``, ``transform_type``, ``parser_type``). ``schema.schema``
is the Struct's JSON Schema (``msgspec.json.schema``); ``new_template`` is an empty
entry with the required keys as ``<Please input ...>`` placeholders.

Implements ``meta`` and ``meta/<object_id>`` of ``shared/specs/factorytx-rest-api.txt``.
"""

from __future__ import annotations

from typing import Any, get_args, get_origin

import msgspec

from dataflows import registry
from dataflows.sdk import unwrap

_OBJECTS: list[tuple[str, str, registry.Registry[Any]]] = [
    ("data_receiver", "Data Receiver", registry.receivers),
    ("data_receiver_asset", "Asset", registry.receivers),
    ("data_transmit", "Transmit", registry.transmits),
    ("transforms", "Transform", registry.transforms),
    ("parsers", "Parser", registry.parsers),
]


class UnknownMeta(LookupError):
    """No such object id or subtype; the message lists what exists."""


def objects() -> dict[str, Any]:
    """The ``/v1/meta`` response: ``{"objects": [{"id", "name", "subtypes"}, ...]}``."""
    registry.load_all()
    out: list[dict[str, Any]] = []
    for object_id, name, reg in _OBJECTS:
        subtypes = []
        for cls in reg.structs():
            tag = cls.__struct_config__.tag
            entry: dict[str, Any] = {"id": tag, "name": cls.display_name()}
            if object_id == "data_receiver_asset":
                entry["data_receiver"] = [tag]
            subtypes.append(entry)
        out.append({"id": object_id, "name": name, "subtypes": subtypes})
    return {"objects": out}


def _stream_struct(receiver: type[msgspec.Struct]) -> type[msgspec.Struct]:
    for info in msgspec.structs.fields(receiver):
        if info.encode_name == "streams":
            bare = unwrap(info.type)
            if get_origin(bare) is list:
                return unwrap(get_args(bare)[0])
    raise UnknownMeta(f"receiver {receiver.__struct_config__.tag!r} has no streams")


def _template(cls: type[msgspec.Struct]) -> dict[str, Any]:
    config = cls.__struct_config__
    out: dict[str, Any] = {}
    if config.tag_field is not None:
        out[config.tag_field] = config.tag
    for info in msgspec.structs.fields(cls):
        if not info.required:
            continue
        bare = unwrap(info.type)
        if get_origin(bare) is list:
            item = unwrap(get_args(bare)[0])
            if isinstance(item, type) and issubclass(item, msgspec.Struct):
                out[info.encode_name] = [_template(item)]
                continue
        out[info.encode_name] = f"<Please input {info.encode_name}>"
    return out


def _known_subtype(reg: registry.Registry[Any], subtype: str) -> str | None:
    """The registered tag ``subtype`` names: itself, or for FactoryTX's
    ``<protocol>_<file format>`` subtypes (``localfile_csv``) the longest tag it extends."""
    if reg.get(subtype) is not None:
        return subtype
    extended = [tag for tag in reg.tags() if subtype.startswith(f"{tag}_")]
    return max(extended, key=len) if extended else None


def describe_object(object_id: str, subtype: str | None) -> dict[str, Any]:
    """The ``/v1/meta/<object_id>`` response for ``subtype``.

    ``subtype`` may be FactoryTX's ``<protocol>_<file format>`` (``localfile_csv`` is the
    ``localfile`` receiver; the answer echoes the subtype asked). ``transmit`` is
    FactoryTX's name of ``data_transmit``, where the contract ignores the subtype: an
    unknown one, or none, is the default transmit type (``remotedatapost``).

    :raises UnknownMeta: unknown object id, or a subtype that is missing or unknown.
    """
    registry.load_all()
    found = {oid: reg for oid, _, reg in _OBJECTS}
    ignore_unknown = object_id == "transmit"
    if ignore_unknown:
        object_id = "data_transmit"
    if object_id not in found:
        raise UnknownMeta(f"unknown object_id {object_id!r}; accepted: {', '.join(found)}, transmit")
    reg = found[object_id]
    tag = _known_subtype(reg, subtype) if subtype else None
    if ignore_unknown and tag is None:
        subtype = None
    subtype = subtype or reg.default_tag
    cls = reg.get(tag or subtype) if subtype else None
    if cls is None:
        raise UnknownMeta(f"{object_id} needs a subtype; accepted: {', '.join(reg.tags())}"
                          if not subtype else
                          f"unknown subtype {subtype!r} of {object_id}; accepted: {', '.join(reg.tags())}")
    if object_id == "data_receiver_asset":
        cls = _stream_struct(cls)
    path = f"{cls.__module__}.{cls.__qualname__}"
    return {
        "subtype": subtype,
        "object": object_id,
        "schema": {"path": path, "schema": msgspec.json.schema(cls)},
        "new_template": {"path": path, "schema": _template(cls)},
    }
