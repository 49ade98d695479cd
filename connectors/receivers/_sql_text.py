"""The ``sql`` receiver's query text: bind parameters, row limits, and the query with
its parameters as literals (for ADBC's ``COPY``), by sqlparse's lexer."""

from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=256)  # a stream's query is the same at every poll
def tokens_of(query: str) -> tuple[tuple[Any, str], ...]:
    """``query``'s lexical tokens (sqlparse's lexer): string literals, quoted names and
    comments come whole, so a ``:name`` inside them is not a bind parameter."""
    import sqlparse

    return tuple(sqlparse.lexer.tokenize(query))


def params(query: str) -> frozenset[str]:
    """The names of ``query``'s ``:name`` bind parameters (not ``::type`` casts, nor a
    ``:name`` inside a string literal, a quoted name or a comment)."""
    from sqlparse import tokens as kinds

    return frozenset(value[1:] for ttype, value in tokens_of(query)
                     if ttype in kinds.Name.Placeholder and value.startswith(":") and value[1:2] != ":")


def limit(query: str) -> int | None:
    """The row limit of ``query``'s last ``LIMIT n``, ``TOP n`` or ``FETCH FIRST n``, if any."""
    from sqlparse import tokens as kinds

    words = [(ttype, value) for ttype, value in tokens_of(query) if ttype not in kinds.Whitespace
             and ttype not in kinds.Newline]
    found = None
    for (ttype, value), (next_type, next_value) in zip(words, words[1:], strict=False):
        if (ttype in kinds.Keyword or ttype in kinds.Name) and value.upper() in ("LIMIT", "TOP", "FIRST", "NEXT") \
                and next_type in kinds.Literal.Number.Integer:
            found = int(next_value)
    return found


def as_text(query: str) -> str:
    """``query`` for SQLAlchemy's ``text()``: a colon inside a string literal, a quoted name
    or a comment is escaped (``\\:``), so ``text()`` binds only the real parameters."""
    from sqlparse import tokens as kinds

    return "".join(value.replace(":", "\\:") if ttype in kinds.Literal or ttype in kinds.Comment else value
                   for ttype, value in tokens_of(query))


def with_literals(query: str, values: dict[str, Any], dialect: Any = None) -> str:
    """``query`` with its ``:name`` bind parameters for ``values`` rendered as literals by
    SQLAlchemy's compiler for ``dialect`` (PostgreSQL's by default), and a trailing ``;``
    dropped, so ADBC can stream it with ``COPY (query) TO STDOUT`` (PostgreSQL takes no
    bind parameters there). A ``:name`` inside a string literal or a comment stays as it is.
    The literals are untyped (``'2024-01-01 00:00:00'``): PostgreSQL gives them the type of
    the column they are compared with, as the state's ``WHERE ts > :ts`` does."""
    import sqlalchemy as sa

    if dialect is None:
        from sqlalchemy.dialects import postgresql

        dialect = postgresql.dialect()
    used = params(query)
    clause = sa.text(as_text(query)).bindparams(**{k: v for k, v in values.items() if k in used})
    rendered = str(clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    return rendered.strip().rstrip(";").rstrip()
