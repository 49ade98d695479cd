"""The one redaction of everything the control API answers.

Every answer, success or failure, JSON or text, passes through :func:`scrub_content`
before it leaves: each secret of the saved config and of the request's own body
(:func:`dataflows.secrets.secret_values`), and the password of every URL
(``https://user:********@host``), becomes ``"********"`` in every string: transmit errors
in ``/v1/status``, marker messages in ``/v1/streams``, violations echoing a posted URL,
log lines, metrics labels. Config documents the API hands out are redacted field by field
(:func:`dataflows.secrets.redact`, so that a ``"********"`` posted back keeps the stored
secret) and marked :class:`RedactedDocument`, which the walk leaves as it is.

Implements the redaction rule of ``docs/api.md`` (no secret in any answer).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from typing import Any

import msgspec

from dataflows.secrets import redact, scrub

#: Secrets of the current request's body, set by the app before the handler runs.
request_secrets: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "request_secrets", default=frozenset())


class RedactedDocument(dict[str, Any]):
    """A config document whose secrets :func:`dataflows.secrets.redact` replaced field by
    field; :func:`scrub_content` does not touch it."""


def redacted(document: Any) -> Any:
    """``document`` redacted field by field, marked :class:`RedactedDocument` when an object."""
    out = redact(document)
    return RedactedDocument(out) if isinstance(out, dict) else out


def scrub_content(content: Any, secrets: Iterable[str]) -> Any:
    """``content`` (JSON-like values, ``str`` or ``bytes``) with :func:`dataflows.secrets.scrub`
    applied to every string in it; object keys and :class:`RedactedDocument` values are kept.

    Content whose JSON holds no ``@`` and none of ``secrets`` (a 300 KB ``/v1/streams``
    answer is encoded in well under a millisecond) is returned as it is, unwalked."""
    secrets = tuple(secrets)
    if not isinstance(content, (str, bytes)) and not _may_hold(content, secrets):
        return content
    return _scrub(content, secrets)


def _may_hold(content: Any, secrets: tuple[str, ...]) -> bool:
    """Whether the JSON of ``content`` may hold a URL password or one of ``secrets`` (raw or
    as JSON escapes it)."""
    try:
        encoded = msgspec.json.encode(content)
    except (TypeError, msgspec.EncodeError):
        return True
    return b"@" in encoded or any(
        form in encoded for secret in secrets for form in (secret.encode(), msgspec.json.encode(secret)[1:-1]))


def _scrub(content: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(content, RedactedDocument):
        return content
    if isinstance(content, str):
        return scrub(content, secrets)
    if isinstance(content, bytes):
        text = content.decode("utf-8", errors="surrogateescape")
        scrubbed = scrub(text, secrets)
        return content if scrubbed == text else scrubbed.encode("utf-8", errors="surrogateescape")
    if isinstance(content, dict):
        return {key: _scrub(value, secrets) for key, value in content.items()}
    if isinstance(content, (list, tuple)):
        return [_scrub(value, secrets) for value in content]
    return content
