"""The conformance harnesses: how the standard suite (``test_conformance.py``) drives a
connector against a real source or endpoint.

A connector's own test module registers one harness (``@receiver_harness``,
``@transmit_harness``, ``@parser_harness``); the standard suite runs every test for every
registered component, and fails for a runnable component without a harness. Records
carry an integer field ``seq`` so the suite can say which arrived.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

RECEIVERS: dict[str, type[ReceiverHarness]] = {}
TRANSMITS: dict[str, type[TransmitHarness]] = {}
PARSERS: dict[str, type[ParserHarness]] = {}

T = TypeVar("T")


class ReceiverHarness:
    """A real source one receiver reads, with one stream ``conformance:test``.

    :param tmp_path: a fresh directory for the source's files.
    :param request: the test's request, for session fixtures (databases, brokers).
    """

    protocol: ClassVar[str]
    #: Whether the source keeps what it served, so a restream reads it all again (tables,
    #: files, rollups); a live source (tag values) has only its present value to read again.
    replayable: ClassVar[bool] = True
    #: Whether a read while the input is broken may send the last record again, as a new one:
    #: a poll of tag values whose bad tag's status changed (OPC UA's ``on_change`` compares
    #: values and status codes).
    repeats_when_broken: ClassVar[bool] = False

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.tmp_path = tmp_path
        self.request = request

    def receiver(self) -> dict[str, Any]:
        """The ``data_receiver`` entry reading the source (``poll_interval`` 1)."""
        raise NotImplementedError

    def add(self, seqs: range) -> None:
        """Make records with these ``seq`` values available, after those added before."""
        raise NotImplementedError

    def break_input(self) -> None:
        """Make bad input appear: a malformed file, a query that fails."""
        raise NotImplementedError

    def heal(self) -> None:
        """Undo what :meth:`break_input` broke where reading cannot skip it (nothing for files)."""

    def close(self) -> None:
        """Release what the harness holds."""


class TransmitHarness:
    """A real endpoint one transmit writes to."""

    transmit_type: ClassVar[str]

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.tmp_path = tmp_path
        self.request = request

    def transmit(self, home: Path) -> dict[str, Any]:
        """The ``data_transmit`` entry writing to the endpoint."""
        raise NotImplementedError

    def durable_seqs(self, home: Path, expected: int) -> list[int]:
        """The ``seq`` of every record the endpoint (or the transmit's durable outbox) holds;
        ``expected`` is how many the caller expects (an endpoint read may stop there)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the harness holds."""


class ParserHarness:
    """Sample bytes for one parser."""

    parser_type: ClassVar[str]

    def parser(self) -> dict[str, Any]:
        """The parser's config entry (default: its type and nothing else)."""
        return {"parser_name": "conformance", "parser_type": self.parser_type}

    def good(self, seqs: range) -> bytes:
        """A file holding records with these ``seq`` values."""
        raise NotImplementedError

    def bad(self) -> bytes:
        """A file the parser must refuse with a ``ParseError``."""
        raise NotImplementedError

    def seqs(self, frame: Any) -> list[int]:
        """The ``seq`` values of the records ``frame`` (what :meth:`good` gave) holds."""
        return list(frame["seq"].to_list())


def _registrar(table: dict[str, Any], key: str) -> Callable[[T], T]:
    def register(cls: T) -> T:
        table[getattr(cls, key)] = cls
        return cls
    return register


receiver_harness = _registrar(RECEIVERS, "protocol")
transmit_harness = _registrar(TRANSMITS, "transmit_type")
parser_harness = _registrar(PARSERS, "parser_type")
