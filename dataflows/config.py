"""The FactoryTX configuration document as strict msgspec Structs, and its validation.

A document has three lists: ``data_receiver``, ``transforms`` (applied in list order)
and ``data_transmit``. Each entry is a Struct chosen by its tag (``protocol``,
``transform_type``, ``transmit_type``; parsers inside file receivers by ``parser_type``)
from the registries in :mod:`dataflows.registry`. The component SDK (bases, field
metadata, hooks) is :mod:`dataflows.sdk`; this module is the document and its checks.

:func:`validate` collects every problem as a :class:`Violation`
``{description, json_path, level}`` and never stops at the first. It walks the raw
JSON along the Struct types (so unknown keys, wrong types, missing keys and unknown
tags are all reported, each at its ``json_path``), then runs each component's own
checks and the checks across components. :func:`load` returns the typed
:class:`Config` or raises :class:`ConfigError` holding the violations.

Implements the Configuration section of ``shared/specs/factorytx-digest.md`` and the
violation shape of ``POST /v1/config/validate`` in ``shared/specs/factorytx-rest-api.txt``.

Decisions where FactoryTX is silent (see ``docs/configuration.md``):

- ``${NAME}`` in any string is replaced by the environment variable ``NAME`` at load
  time; ``$${NAME}`` is a literal ``${NAME}``; an unset variable is an error.
- Template placeholders such as ``"<Please enter the asset timezone>"`` are warnings
  in :func:`validate` (so the documented templates validate) and errors in
  ``load(..., runnable=True)``, which is what the dataflow uses.
- ``poll_interval`` accepts fractional seconds (FactoryTX: integer seconds).
"""

from __future__ import annotations

import json
import os
import re
import types
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec

from dataflows import registry
from dataflows.records import StreamKey, pattern_problem, stream_matches
from dataflows.sdk import (
    JsonPath,
    ReceiverConfig,
    StreamConfig,
    Violation,
    choice_violations,
    error,
    field_meta,
    is_placeholder,
    unwrap,
    warning,
)

__all__ = ["SECTIONS", "Config", "ConfigError", "JsonPath", "Violation", "error", "leaves", "load", "load_file",
           "read_document", "resolve_env", "validate", "warning"]


class ConfigError(ValueError):
    """A config document has error-level violations; ``.violations`` lists them all."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        lines = [str(v) for v in violations]
        super().__init__("invalid configuration:\n  " + "\n  ".join(lines))


class Config(msgspec.Struct, kw_only=True, frozen=True):
    """A validated configuration: components in document order."""

    data_receiver: list[Any]
    transforms: list[Any]
    data_transmit: list[Any]

    def streams(self) -> Iterator[tuple[ReceiverConfig, StreamConfig]]:
        """Every configured (receiver, stream) pair."""
        for receiver in self.data_receiver:
            for stream in receiver.stream_list:
                yield receiver, stream


SECTIONS: dict[str, registry.Registry[Any]] = {
    "data_receiver": registry.receivers,
    "transforms": registry.transforms,
    "data_transmit": registry.transmits,
}

# --------------------------------------------------------------------------- value helpers

_ENV_REF = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")


def resolve_env(document: Any, environ: Mapping[str, str], path: JsonPath | None = None,
                out: list[Violation] | None = None) -> tuple[Any, list[Violation]]:
    """Replace ``${NAME}`` in every string of ``document`` by ``environ[NAME]``.

    :returns: the resolved copy and the violations (one per unset variable).
    """
    path = [] if path is None else path
    out = [] if out is None else out
    if isinstance(document, dict):
        return {k: resolve_env(v, environ, [*path, k], out)[0] for k, v in document.items()}, out
    if isinstance(document, list):
        return [resolve_env(v, environ, [*path, i], out)[0] for i, v in enumerate(document)], out
    if isinstance(document, str) and "${" in document:

        def substitute(match: re.Match[str]) -> str:
            escaped, name = match.groups()
            if escaped:
                return "${" + name + "}"
            if name not in environ:
                out.append(error(f"environment variable {name!r} is not set", path))
                return match.group(0)
            return environ[name]

        return _ENV_REF.sub(substitute, document), out
    return document, out


# --------------------------------------------------------------------------- the schema walker


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _holds_struct(tp: Any) -> bool:
    tp = unwrap(tp)
    if _is_struct(tp):
        return True
    return any(_holds_struct(arg) for arg in get_args(tp))


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "str", bool: "bool", int: "int", float: "float",
            type(None): "null"}.get(type(value), type(value).__name__)


class _Walker:
    """Checks raw JSON against Struct types, collecting violations instead of stopping."""

    def __init__(self) -> None:
        self.out: list[Violation] = []
        self.blocking = 0  # violations that stop a component from decoding (not choices)

    def _block(self, violation: Violation) -> None:
        self.out.append(violation)
        self.blocking += 1

    def check(self, value: Any, tp: Any, path: JsonPath) -> None:
        bare = unwrap(tp)
        if _is_struct(bare):
            self.struct(value, bare, path)
        elif get_origin(bare) in (Union, types.UnionType) and _holds_struct(bare):
            self.tagged(value, [a for a in get_args(bare) if _is_struct(a)], path)
        elif get_origin(bare) is list and _holds_struct(bare):
            # Check the list itself (type, min_length) with items as Any, then each item.
            meta = get_args(tp)[1:] if get_origin(tp) is Annotated else ()
            shallow = Annotated[(list[Any], *meta)] if meta else list[Any]
            if self.leaf(value, shallow, path):
                for index, item in enumerate(value):
                    self.check(item, get_args(bare)[0], [*path, index])
        else:
            self.leaf(value, tp, path)

    def leaf(self, value: Any, tp: Any, path: JsonPath) -> bool:
        try:
            msgspec.convert(value, tp)
        except msgspec.ValidationError as exc:
            message = str(exc) if "got" in str(exc) else f"{exc}, got {value!r}"  # name the bad value
            self._block(error(message, path))
            return False
        choices = field_meta(tp).get("choices")
        if choices is not None:  # an enumerated setting: decodes, but only its choices can run
            self.out.extend(choice_violations(value, choices, str(path[-1]) if path else "value", path))
        return True

    def tagged(self, value: Any, structs: list[type[msgspec.Struct]], path: JsonPath) -> None:
        if not isinstance(value, dict):
            self._block(error(f"Expected `object`, got `{_kind(value)}`", path))
            return
        tag_field = structs[0].__struct_config__.tag_field
        by_tag = {s.__struct_config__.tag: s for s in structs}
        accepted = ", ".join(sorted(by_tag))
        if tag_field not in value:
            self._block(error(f"missing required key `{tag_field}`; accepted: {accepted}", path))
            return
        tag = value[tag_field]
        if not isinstance(tag, str) or tag not in by_tag:  # a list or object is no tag either
            self._block(error(f"unknown {tag_field} {tag!r}; accepted: {accepted}", [*path, tag_field]))
            return
        self.struct(value, by_tag[tag], path)

    def struct(self, value: Any, cls: type[msgspec.Struct], path: JsonPath) -> None:
        if not isinstance(value, dict):
            self._block(error(f"Expected `object`, got `{_kind(value)}`", path))
            return
        fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
        tag_field = cls.__struct_config__.tag_field
        for key in value:
            if key not in fields and key != tag_field:
                self._block(error(f"unknown key `{key}`; accepted: {', '.join(sorted(fields))}",
                                      [*path, key]))
        for name, info in fields.items():
            if name in value:
                self.check(value[name], info.type, [*path, name])
            elif info.required:
                self._block(error(f"missing required key `{name}`", path))


# --------------------------------------------------------------------------- validation


def _normalise(document: dict[str, Any]) -> dict[str, Any]:
    """Fill documented defaults that the Structs cannot express (a default tag)."""
    out = dict(document)
    for section, reg in SECTIONS.items():
        items = out.get(section)
        if reg.default_tag and isinstance(items, list):
            out[section] = [
                {reg.tag_field: reg.default_tag, **item}
                if isinstance(item, dict) and reg.tag_field not in item else item
                for item in items
            ]
    return out


def leaves(document: Any, path: JsonPath | None = None) -> Iterator[tuple[JsonPath, Any]]:
    """``(json_path, value)`` of every value of ``document`` that is neither an object nor a
    list, in document order."""
    path = [] if path is None else path
    if isinstance(document, dict):
        for key, value in document.items():
            yield from leaves(value, [*path, key])
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from leaves(value, [*path, index])
    else:
        yield path, document


def _placeholders(document: Any, path: JsonPath) -> Iterator[Violation]:
    for where, value in leaves(document, path):
        if is_placeholder(value):
            yield warning(f"template placeholder not filled in: {value!r}", where)


def _duplicates(names: list[tuple[str, JsonPath]], what: str) -> Iterator[Violation]:
    counts = Counter(name for name, _ in names)
    for name, path in names:
        if counts[name] > 1:
            yield error(f"duplicate {what} {name!r}", path)


def _filter_stream_violations(patterns: list[str], streams: list[StreamKey],
                              path: JsonPath) -> Iterator[Violation]:
    for index, pattern in enumerate(patterns):
        problem = pattern_problem(pattern)
        if problem:
            yield error(problem, [*path, index])
        elif streams and not any(stream_matches([pattern], s) for s in streams):
            yield warning(f"filter_stream pattern {pattern!r} matches no configured stream",
                          [*path, index])


def _cross_checks(document: dict[str, Any], typed: dict[str, list[tuple[int, Any]]]) -> Iterator[Violation]:
    for section, name_key in (("data_receiver", "data_receiver_name"),
                              ("transforms", "transform_name"), ("data_transmit", "transmit_name")):
        items = document.get(section)
        if isinstance(items, list):
            names = [(item[name_key], [section, i, name_key]) for i, item in enumerate(items)
                     if isinstance(item, dict) and isinstance(item.get(name_key), str)]
            yield from _duplicates(names, name_key)

    streams: list[StreamKey] = []
    for index, receiver in typed["data_receiver"]:
        keys = [s.key for s in receiver.stream_list]
        streams.extend(keys)
        counts = Counter(keys)
        for s_index, key in enumerate(keys):
            if counts[key] > 1:
                yield error(f"duplicate stream {key} in receiver {receiver.data_receiver_name!r}",
                            ["data_receiver", index, "streams", s_index])
        for p_index, parser in enumerate(getattr(receiver, "parsers", [])):
            yield from _filter_stream_violations(
                parser.filter_stream, keys,
                ["data_receiver", index, "parsers", p_index, "filter_stream"])

    # Unmatched patterns are only known when every receiver (and so every stream) is known.
    receivers = document.get("data_receiver")
    known = streams if isinstance(receivers, list) and len(typed["data_receiver"]) == len(receivers) else []
    for section in ("transforms", "data_transmit"):
        for index, component in typed[section]:
            yield from _filter_stream_violations(component.filter_stream, known,
                                                 [section, index, "filter_stream"])

    transmits = [component for _, component in typed["data_transmit"]]
    if transmits:
        for index, receiver in typed["data_receiver"]:
            for s_index, stream in enumerate(receiver.stream_list):
                if not any(stream_matches(t.filter_stream, stream.key) for t in transmits):
                    yield warning(f"records of stream {stream.key} reach no transmit",
                                  ["data_receiver", index, "streams", s_index])


def _validate(document: Any, *, runnable: bool,
              environ: Mapping[str, str] | None) -> tuple[list[Violation], Config | None]:
    registry.load_all()
    if not isinstance(document, dict):
        return [error(f"Expected `object`, got `{_kind(document)}`", [])], None
    environ_map = os.environ if environ is None else environ
    document, violations = resolve_env(document, environ_map)
    document = _normalise(document)

    walker = _Walker()
    if not any(section in document for section in SECTIONS):
        walker.out.append(error(f"the config has none of the sections {', '.join(SECTIONS)}; "
                                "an empty config would collect nothing", []))
    for key in document:
        if key not in SECTIONS:
            walker.out.append(error(f"unknown key `{key}`; accepted: {', '.join(SECTIONS)}", [key]))
    typed: dict[str, list[tuple[int, Any]]] = {section: [] for section in SECTIONS}
    for section, reg in SECTIONS.items():
        items = document.get(section, [])
        if not isinstance(items, list):
            walker.out.append(error(f"'{section}' section is not defined as a list", [section]))
            continue
        union = reg.union()
        for index, item in enumerate(items):
            before = walker.blocking
            walker.check(item, union, [section, index])
            if walker.blocking == before:
                component = msgspec.convert(item, union)
                component, missing = component.from_environment(environ_map, [section, index])
                if not runnable:
                    missing = [warning(v.description, v.json_path) for v in missing]
                walker.out.extend(missing)
                typed[section].append((index, component))
                walker.out.extend(component.violations([section, index]))
                if runnable and not component.runnable:
                    walker.out.append(error(
                        f"{reg.tag_field} {type(component).__struct_config__.tag!r} is accepted in the "
                        "config but this version of factoryflow cannot run it yet",
                        [section, index, reg.tag_field]))
    if runnable:
        for section in ("data_receiver", "data_transmit"):
            if not document.get(section):
                walker.out.append(error(f"nothing to run: '{section}' is empty", [section]))
    violations.extend(walker.out)
    violations.extend(_cross_checks(document, typed))
    placeholders = list(_placeholders(document, []))
    if runnable:
        placeholders = [error(v.description, v.json_path) for v in placeholders]
    violations.extend(placeholders)

    if any(v.level == "error" for v in violations):
        return violations, None
    config = Config(**{section: [c for _, c in typed[section]] for section in SECTIONS})
    return violations, config


def validate(document: Any, *, runnable: bool = False,
             environ: Mapping[str, str] | None = None) -> list[Violation]:
    """Every problem in a FactoryTX config document, errors and warnings, in document order.

    :param document: the decoded JSON document.
    :param runnable: also report what would stop the dataflow from running it: unfilled
        template placeholders and components this version can only validate.
    :param environ: variables for ``${NAME}`` references; defaults to ``os.environ``.
    """
    return _validate(document, runnable=runnable, environ=environ)[0]


def load(document: Any, *, runnable: bool = True,
         environ: Mapping[str, str] | None = None) -> Config:
    """The typed :class:`Config` for a document, with ``${NAME}`` references resolved.

    :raises ConfigError: the document has error-level violations (all are listed).
    """
    violations, config = _validate(document, runnable=runnable, environ=environ)
    if config is None:
        raise ConfigError([v for v in violations if v.level == "error"])
    return config


def read_document(path: str | os.PathLike[str]) -> Any:
    """Decode the JSON config file at ``path``.

    :raises ConfigError: the file is missing or is not valid JSON (with line and column).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([error(f"cannot read config file {os.fspath(path)!r}: {exc.strerror}", [])]) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([error(f"{os.fspath(path)} is not valid JSON: {exc.msg} at line "
                                 f"{exc.lineno} column {exc.colno}", [])]) from exc


def load_file(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """:func:`load` the JSON config file at ``path`` for running.

    :raises ConfigError: unreadable, not JSON, or invalid.
    """
    return load(read_document(path), runnable=True, environ=environ)
