"""Secrets in config documents: finding, redacting and restoring them, and keeping them out of logs.

A secret is the value of a field declared with ``describe(..., secret=True)`` (passwords,
API keys, connection strings), the value of a key of a settings object whose name marks a
secret (``describe(..., secret_keys=PATTERN)``: librdkafka's ``sasl.password``,
``ssl.key.password``, ...), or the password in a URL's userinfo anywhere in the config
(``https://user:password@host``, redacted to ``https://user:********@host``). The walk follows the raw JSON along the component
Structs (by each entry's tag), so a new connector's secrets are found without a list
kept here. A value that is only a template placeholder (``"<Please input your API key>"``) or
only an environment reference (``${NAME}``) is not a secret and is left as it is.

Implements the redaction rules of the control API (``GET /v1/config``, templates, logs:
``"********"``; a POSTed ``"********"`` keeps the stored secret).
"""

from __future__ import annotations

import copy
import logging
import re
import types
from collections.abc import Iterable, Iterator
from typing import Any, Union, get_args, get_origin

import msgspec

from dataflows import registry
from dataflows.config import SECTIONS, leaves
from dataflows.sdk import JsonPath, Violation, error, field_meta, secret_paths, unwrap

#: What a secret reads as in the API and the logs.
REDACTED = "********"

_ONLY_PLACEHOLDER = re.compile(r"<[^<>]*>")  # a template's hint, nothing typed in
_ENV_ONLY = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")  # a reference to the environment
#: A URL's userinfo with a password: ``scheme://user:PASSWORD@`` (group 1 is the password).
_URL_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^/\s@]+)@")
_REDACTED_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:" + re.escape(REDACTED) + "@")
_NAME_KEYS = {"data_receiver": "data_receiver_name", "transforms": "transform_name",
              "data_transmit": "transmit_name"}


def _struct_for(value: Any, tp: Any) -> type[msgspec.Struct] | None:
    """The Struct the raw ``value`` decodes into under type ``tp`` (None: not a Struct)."""
    bare = unwrap(tp)
    if isinstance(bare, type) and issubclass(bare, msgspec.Struct):
        return bare
    if get_origin(bare) in (Union, types.UnionType) and isinstance(value, dict):
        structs = [a for a in get_args(bare) if isinstance(a, type) and issubclass(a, msgspec.Struct)]
        for struct in structs:
            config = struct.__struct_config__
            if config.tag_field is None or value.get(config.tag_field) == config.tag:
                return struct
    return None


def _walk(value: Any, tp: Any, path: JsonPath) -> Iterator[JsonPath]:
    bare = unwrap(tp)
    if get_origin(bare) is list and isinstance(value, list):
        (item_tp,) = get_args(bare)
        for index, item in enumerate(value):
            yield from _walk(item, item_tp, [*path, index])
        return
    if get_origin(bare) in (Union, types.UnionType) and isinstance(value, list):
        for arg in get_args(bare):
            if get_origin(unwrap(arg)) is list:
                yield from _walk(value, arg, path)
                return
    struct = _struct_for(value, tp)
    if struct is None or not isinstance(value, dict):
        return
    secrets = set(secret_paths(struct))
    for info in msgspec.structs.fields(struct):
        if info.encode_name not in value:
            continue
        field_value = value[info.encode_name]
        secret_keys = field_meta(info.type).get("secret_keys")
        if info.encode_name in secrets:
            if _is_secret_value(field_value):
                yield [*path, info.encode_name]
        elif secret_keys and isinstance(field_value, dict):  # e.g. librdkafka options
            for key, item in field_value.items():
                if isinstance(key, str) and re.search(secret_keys, key) and _is_secret_value(item):
                    yield [*path, info.encode_name, key]
        else:
            yield from _walk(field_value, info.type, [*path, info.encode_name])


def _is_secret_value(value: Any) -> bool:
    """A typed-in secret: a non-empty string, not a placeholder, not an environment reference."""
    return (isinstance(value, str) and bool(value) and not _ONLY_PLACEHOLDER.fullmatch(value)
            and not _ENV_ONLY.fullmatch(value))


def url_passwords(document: Any) -> Iterator[tuple[JsonPath, str]]:
    """``(json_path, password)`` of every URL with a password in its userinfo
    (``scheme://user:password@host``) anywhere in ``document``."""
    for path, value in leaves(document):
        if isinstance(value, str) and "@" in value:
            for match in _URL_USERINFO.finditer(value):
                if _is_secret_value(match.group(1)) and match.group(1) != REDACTED:
                    yield path, match.group(1)


def secret_locations(document: Any) -> list[JsonPath]:
    """The ``json_path`` of every secret value in a raw config document."""
    registry.load_all()
    if not isinstance(document, dict):
        return []
    out: list[JsonPath] = []
    for section, reg in SECTIONS.items():
        items = document.get(section)
        if not isinstance(items, list):
            continue
        union = reg.union()
        for index, item in enumerate(items):
            if isinstance(item, dict) and reg.default_tag and reg.tag_field not in item:
                item = {reg.tag_field: reg.default_tag, **item}
            out.extend(_walk(item, union, [section, index]))
    return out


def _get(document: Any, path: JsonPath) -> Any:
    for key in path:
        document = document[key]
    return document


def _set(document: Any, path: JsonPath, value: Any) -> None:
    _get(document, path[:-1])[path[-1]] = value


def redact(document: Any) -> Any:
    """A copy of ``document`` with every secret replaced by :data:`REDACTED`, and the
    password of every URL with one (``https://user:********@host``)."""
    out = copy.deepcopy(document)
    for path in secret_locations(out):
        _set(out, path, REDACTED)
    for path, _ in list(url_passwords(out)):
        _set(out, path, _redact_userinfo(_get(out, path)))
    return out


def _redact_userinfo(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if not _is_secret_value(match.group(1)):
            return match.group(0)
        return match.group(0)[: match.start(1) - match.start(0)] + REDACTED + "@"

    return _URL_USERINFO.sub(replace, text)


def secret_values(document: Any) -> set[str]:
    """The secret values of ``document`` (to scrub from log lines), URL passwords included."""
    return ({_get(document, path) for path in secret_locations(document)}
            | {password for _, password in url_passwords(document)})


def _named(document: Any, path: JsonPath) -> tuple[str, str, JsonPath] | None:
    """``(section, component name, path inside the component)`` for a path into a component."""
    if len(path) < 2:
        return None
    section, index, *rest = path
    try:
        name = document[section][index][_NAME_KEYS[str(section)]]
    except (KeyError, IndexError, TypeError):
        return None
    return str(section), str(name), rest


def restore_secrets(document: Any, stored: Any) -> tuple[Any, list[Violation]]:
    """``document`` with each :data:`REDACTED` secret (a whole value, or the password of a
    URL: ``https://user:********@host``) replaced by the stored config's value for the same
    component (by name) and field.

    :returns: the restored copy and an error for each ``"********"`` with no stored secret.
    """
    out = copy.deepcopy(document)
    stored_at: dict[tuple[str, str, str], Any] = {}
    for path in secret_locations(stored):
        named = _named(stored, path)
        if named is not None:
            stored_at[(named[0], named[1], repr(named[2]))] = _get(stored, path)
    stored_urls: dict[tuple[str, str, str], list[str]] = {}
    for path, password in url_passwords(stored):
        named = _named(stored, path)
        if named is not None:
            stored_urls.setdefault((named[0], named[1], repr(named[2])), []).append(password)
    violations: list[Violation] = []
    for path in [p for p in secret_locations(out) if _get(out, p) == REDACTED]:
        named = _named(out, path)
        key = (named[0], named[1], repr(named[2])) if named else None
        if key in stored_at:
            _set(out, path, stored_at[key])
        else:
            violations.append(error(f'"{REDACTED}" keeps the stored secret, but the saved config has '
                                    "no secret here to keep", path))
    for path in _redacted_urls(out):
        named = _named(out, path)
        passwords = iter(stored_urls.get((named[0], named[1], repr(named[2])), []) if named else [])
        text = _get(out, path)

        def restore(match: re.Match[str], passwords: Iterator[str] = passwords) -> str:
            password = next(passwords, None)
            return match.group(0) if password is None else match.group(0)[:-len(REDACTED) - 1] + password + "@"

        restored = _REDACTED_USERINFO.sub(restore, text)
        if _REDACTED_USERINFO.search(restored):
            violations.append(error(f'"{REDACTED}" in a URL keeps the stored password, but the saved '
                                    "config has no password here to keep", path))
        _set(out, path, restored)
    return out, violations


def _redacted_urls(document: Any) -> Iterator[JsonPath]:
    for path, value in leaves(document):
        if isinstance(value, str) and _REDACTED_USERINFO.search(value):
            yield path


#: Secret values shorter than this are not scrubbed from logs: it would mangle ordinary words.
MIN_SCRUBBED = 4


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each of ``secrets`` (those of :data:`MIN_SCRUBBED` characters or more),
    and the password of every URL in it (``https://user:********@host``), replaced by
    :data:`REDACTED`: the one redaction of free text (log lines, API answers, violations,
    markers), whatever config the text came from."""
    for secret in secrets:
        if len(secret) >= MIN_SCRUBBED:
            text = text.replace(secret, REDACTED)
    return _redact_userinfo(text) if "@" in text else text


class RedactingFilter(logging.Filter):
    """Replaces each of ``secrets`` in log records by :data:`REDACTED` (install on handlers)."""

    def __init__(self, secrets: set[str] | None = None) -> None:
        super().__init__()
        self.secrets = secrets or set()

    def use(self, document: Any) -> None:
        """Scrub the secrets of the config ``document`` from now on (None: none)."""
        self.secrets = {v for v in secret_values(document) if len(v) >= MIN_SCRUBBED}

    def scrub(self, text: str) -> str:
        """``text`` with every secret and every URL's password replaced by :data:`REDACTED`."""
        return scrub(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        scrubbed = self.scrub(text)
        if scrubbed != text:
            record.msg, record.args = scrubbed, None
        return True
