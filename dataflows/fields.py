"""Config field metadata and the problems validation reports: the declarations every
component's Struct is made of (:func:`describe`, the shared field types) and
:class:`Violation` with its helpers.

Re-exported by :mod:`dataflows.sdk`, the connectors' one door. Implements the
validation messages of ``shared/specs/factorytx-rest-api.txt`` (``{description,
json_path, level}``).
"""

from __future__ import annotations

import re
import urllib.parse
import zoneinfo
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec

JsonPath = list[str | int]
Level = Literal["error", "warning"]


# --------------------------------------------------------------------------- violations


class Violation(msgspec.Struct, frozen=True):
    """One problem in a config document.

    :ivar description: what is wrong, for a person.
    :ivar json_path: where: keys (str) and zero-based list indexes (int) from the root.
    :ivar level: ``"error"`` (the config cannot run) or ``"warning"``.
    """

    description: str
    json_path: JsonPath
    level: Level = "error"

    def __str__(self) -> str:
        """``json/path/0: description`` (the description alone for the whole document)."""
        where = "/".join(map(str, self.json_path))
        return f"{where}: {self.description}" if where else self.description


def error(description: str, path: JsonPath) -> Violation:
    """An error-level :class:`Violation`."""
    return Violation(description, list(path), "error")


def warning(description: str, path: JsonPath) -> Violation:
    """A warning-level :class:`Violation`."""
    return Violation(description, list(path), "warning")


# --------------------------------------------------------------------------- field metadata


def describe(description: str, *, secret: bool = False, choices: Sequence[str] | None = None,
             secret_keys: str | None = None, **constraints: Any) -> msgspec.Meta:
    """Field metadata: a description, msgspec constraints, whether it is a secret, and the
    accepted values of an enumerated setting.

    Secret fields are redacted by the API and logs (see :func:`secret_paths`); for a field
    holding an object of settings, ``secret_keys`` (a regular expression) marks the keys
    whose values are secrets. ``choices`` appear as ``enum`` in the JSON schema
    (``/v1/meta``) and are checked by validation, which lets template placeholders
    (``"<Please ...>"``) through as warnings.
    """
    extra: dict[str, Any] = {}
    if secret:
        extra["secret"] = True
    if secret_keys is not None:
        extra["secret_keys"] = secret_keys
    if choices is not None:
        extra["choices"] = list(choices)
        constraints["extra_json_schema"] = {"enum": list(choices)}
    return msgspec.Meta(description=description, extra=extra or None, **constraints)


NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
FilterStream = Annotated[
    list[str],
    describe("Streams this component applies to: '*', 'asset:stream_type', globs on each side."),
]
PollInterval = Annotated[
    float, describe("Seconds between polls (FactoryTX: integer, default 5).", ge=0.05, le=65535)
]
#: The ``spool_max_bytes`` of a store-and-forward transmit (see
#: :meth:`TransmitConfig.spool_bytes`); its default is :data:`DEFAULT_SPOOL_BYTES`.
SpoolMaxBytes = Annotated[int, describe(
    "Disk budget of the spool in bytes: while the broker is down, records wait there and the "
    "other transmits go on; when it is full, the dataflow waits.", ge=1024 * 1024)]
DEFAULT_SPOOL_BYTES = 1024 ** 3


def unwrap(tp: Any) -> Any:
    """``tp`` without its ``Annotated`` layers."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def field_meta(tp: Any) -> dict[str, Any]:
    """The merged ``extra`` of the :func:`describe` metadata on a field type."""
    out: dict[str, Any] = {}
    while get_origin(tp) is Annotated:
        for meta in get_args(tp)[1:]:
            if isinstance(meta, msgspec.Meta) and meta.extra:
                out.update(meta.extra)
        tp = get_args(tp)[0]
    return out


def secret_paths(cls: type[msgspec.Struct]) -> list[str]:
    """Names of the fields of ``cls`` marked secret (``describe(..., secret=True)``)."""
    return [info.encode_name for info in msgspec.structs.fields(cls)
            if field_meta(info.type).get("secret")]


_PLACEHOLDER = re.compile(r"<[A-Za-z][^<>]*>")


def is_placeholder(value: object) -> bool:
    """True for a template placeholder left unfilled, e.g. ``"<Please input the host>"``."""
    return isinstance(value, str) and _PLACEHOLDER.search(value) is not None


def timezone_violations(value: str | None, path: JsonPath) -> list[Violation]:
    """An error when ``value`` is not an IANA timezone name (placeholders are left alone)."""
    if value is None or is_placeholder(value):
        return []
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return [error(f"{value!r} is not an IANA timezone name (e.g. 'America/Chicago')", path)]
    return []


#: A host name (RFC 1123 labels; ``_`` tolerated, as resolvers do) or an IPv4 address.
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


def http_url_violations(key: str, value: str | None, path: JsonPath) -> list[Violation]:
    """An error, at ``path + [key]``, when ``value`` is not an ``http://`` or ``https://`` URL
    with a valid host and port (placeholders are left alone). The message names the scheme
    or the host, never the whole URL: a URL may carry a password."""
    if not value or is_placeholder(value):
        return []
    where = [*path, key]
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https"):
        found = f"it starts with {parts.scheme + '://'!r}" if parts.netloc else "it has no scheme"
        return [error(f"{key} must start with http:// or https:// ({found})", where)]
    host = parts.hostname or ""
    if not host or (not _HOST.fullmatch(host) and not (":" in host and "[" in parts.netloc)):
        return [error(f"{key} has no valid host name: {host!r}", where)]
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return [error(f"{key} has an invalid port after host {host!r}", where)]
    return []


def choice_violations(value: object, choices: Iterable[str], what: str,
                      path: JsonPath) -> list[Violation]:
    """An error when ``value`` is not one of ``choices`` (placeholders are left alone)."""
    accepted = sorted(choices)
    if value is None or is_placeholder(value) or value in accepted:
        return []
    return [error(f"unsupported {what} {value!r}; accepted: {', '.join(accepted)}", path)]
