"""Bounds on what a request body may hold, checked before any handler decodes it.

A FactoryTX config is a few levels deep and its numbers are short, so a body nested
deeper than :data:`MAX_DEPTH` or holding a number longer than :data:`MAX_NUMBER_DIGITS`
characters is refused with a 400 naming the limit: without the bounds, 10,000 nested
arrays exhaust the decoders' recursion and a 5,000-digit integer exceeds Python's integer
conversion limit, both answered 500 before.

Implements the request side of ``shared/specs/factorytx-rest-api.txt`` (bodies are JSON).
"""

from __future__ import annotations

import json
from typing import Any

#: Deepest nesting of arrays and objects accepted in a request body.
MAX_DEPTH = 64
#: Longest number accepted in a request body, in characters (sign, digits, point, exponent).
MAX_NUMBER_DIGITS = 100
_TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels; at most {MAX_DEPTH} are accepted"


class BodyRefused(ValueError):
    """A request body that is not JSON, or is JSON beyond the bounds; the message says which."""


def _number(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        if len(text) > MAX_NUMBER_DIGITS:
            raise BodyRefused(f"a number of {len(text)} characters; at most {MAX_NUMBER_DIGITS} are accepted")
        return kind(text)
    return parse


def _constant(name: str) -> Any:
    raise BodyRefused(f"invalid JSON: {name} is not a JSON value")


def _depth(document: Any) -> int:
    """The nesting depth of a decoded document (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_body(body: bytes) -> Any:
    """Check a request body: JSON, nested at most :data:`MAX_DEPTH` deep, numbers at most
    :data:`MAX_NUMBER_DIGITS` characters. An empty body passes (the handler decides).

    :returns: the decoded document (None for an empty body).
    :raises BodyRefused: with the line, column and reason, or the limit exceeded.
    """
    if not body.strip():
        return None
    try:
        document = json.loads(body, parse_int=_number(int), parse_float=_number(float),
                              parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise BodyRefused(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise BodyRefused(f"invalid JSON: not UTF-8 at byte {exc.start}") from None
    except RecursionError:  # deeper than the decoder's own recursion: far beyond the bound
        raise BodyRefused(_TOO_DEEP) from None
    if _depth(document) > MAX_DEPTH:
        raise BodyRefused(_TOO_DEEP)
    return document
