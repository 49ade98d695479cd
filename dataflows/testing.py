"""The public test kit: what a connector's tests need to run its component the way the
dataflow does, without wall-clock waits.

- :class:`Clock`: a UTC clock for :class:`~dataflows.context.RunContext` that moves only
  when the test moves it; the runtime times everything (polls, backoff, the look at the
  control store) by it.
- :class:`StreamDriver`: one receiver stream through the runtime's real partition (the
  code bytewax calls: backoff, markers, restream, state), opened from a snapshot or from
  nothing; drivers sharing a :class:`~dataflows.runtime.ReceiverSource` share the
  receiver's per-worker resources (``open_worker``), as the streams of one worker do.
- :func:`load_receiver`: a receiver entry, validated and loaded as the dataflow loads it.
- :func:`sink_partition`: the partition a transmit writes through on one worker.
- :func:`poll_until`: poll a condition until it holds, for what a real server does on its
  own time.
- :func:`markers`: the stream markers in an installation's ledger.

Used by factoryflow's own suite (``tests/``) and meant for packages of connectors of
their own (``docs/connectors.md``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dataflows.context import RunContext
from dataflows.delivery import transmit_sink
from dataflows.ledger import Ledger, Marker
from dataflows.outbox import Outbox
from dataflows.positions import Update
from dataflows.records import Batch
from dataflows.runtime import PartitionState, ReceiverSource

if TYPE_CHECKING:
    import polars as pl

    from dataflows.sdk import ReceiverConfig, StreamConfig, TransmitConfig

__all__ = ["TRANSMIT", "Clock", "StreamDriver", "load_receiver", "markers", "poll_until", "sink_partition"]

T = TypeVar("T")

#: A transmit for configs a test loads only for their receiver.
TRANSMIT = {"transmit_name": "t", "transmit_type": "localfile"}


class Clock:
    """A UTC-aware clock that moves only when told: pass it as ``RunContext(now=clock)``.

    :param now: where it starts (default 2026-01-01T00:00Z). A file receiver's tests start
        it an hour ahead of the wall clock (``Clock.ahead(3600)``), so files written now
        are already still.
    """

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 1, 1, tzinfo=UTC)

    @classmethod
    def ahead(cls, seconds: float) -> Clock:
        """A clock ``seconds`` ahead of the wall clock."""
        return cls(datetime.now(UTC) + timedelta(seconds=seconds))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move ``seconds`` on; the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now

    def to(self, moment: datetime | None, plus: float = 0.0) -> datetime:
        """Move to ``moment`` plus ``plus`` seconds, never back (``None``: stay); the new time."""
        if moment is not None:
            self.now = max(self.now, moment)
        return self.advance(plus)


def load_receiver(entry: dict[str, Any]) -> ReceiverConfig:
    """The receiver of the config entry ``entry``, loaded as the dataflow loads it (with a
    local-file transmit beside it).

    :raises dataflows.config.ConfigError: the entry does not validate.
    """
    from dataflows.config import load

    return load({"data_receiver": [entry], "transforms": [], "data_transmit": [TRANSMIT]}).data_receiver[0]


class StreamDriver:
    """One stream of ``receiver`` run through the runtime's partition, as bytewax runs it.

    :param receiver: a loaded receiver (:func:`load_receiver`).
    :param ctx: the run context; with a :class:`Clock` as its ``now``, :meth:`poll` moves it.
    :param state: the partition state to resume from (``None``: a first run); a bare
        reader state is taken as it is, as from an earlier version's snapshot.
    :param stream: which stream (default: the receiver's only, or first, stream).
    :param source: the :class:`~dataflows.runtime.ReceiverSource` to build the partition
        from; drivers given the same one share the receiver's ``open_worker`` resources.
    """

    def __init__(self, receiver: ReceiverConfig, ctx: RunContext, state: Any = None, *,
                 stream: StreamConfig | None = None, source: ReceiverSource | None = None) -> None:
        self.receiver = receiver
        self.stream = stream or receiver.stream_list[0]
        self.ctx = ctx
        self.source = source or ReceiverSource(receiver, ctx)
        self.partition = self.source.build_part("test", str(self.stream.key), state)
        self._closed = False

    @classmethod
    def of(cls, entry: dict[str, Any], home: Path, state: Any = None, *, clock: Clock | None = None,
           expected: frozenset[str] = frozenset()) -> StreamDriver:
        """A driver of the first stream of the receiver entry ``entry``
        (:func:`load_receiver`), with ``$FACTORYFLOW_HOME`` at ``home``, on ``clock`` (a new
        :class:`Clock` by default), its streams' records reaching the transmits ``expected``
        (whose acknowledgements a ``delete_completed`` receiver waits for)."""
        receiver = load_receiver(entry)
        ctx = RunContext(home=home, now=clock or Clock(), expected_transmits={
            (receiver.data_receiver_name, s.key): expected for s in receiver.stream_list})
        return cls(receiver, ctx, state)

    @property
    def clock(self) -> Clock:
        """The context's clock.

        :raises TypeError: the context runs on another clock."""
        if not isinstance(self.ctx.now, Clock):
            raise TypeError("this driver's RunContext has no dataflows.testing.Clock")
        return self.ctx.now

    def next_batch(self) -> list[Batch]:
        """One ``next_batch`` of the partition, the clock left where it is."""
        return self.partition.next_batch()

    def poll(self) -> list[Batch]:
        """One ``next_batch``; then the clock moves just past the stream's next poll (or
        10 ms on, when it reads again at once), so the next call reads."""
        batches = self.partition.next_batch()
        self.clock.to(self.partition.next_poll, 0.01)
        return batches

    def frames(self, polls: int = 1) -> list[pl.DataFrame]:
        """The frames of the batches of ``polls`` :meth:`poll` calls."""
        return [b.frame for _ in range(polls) for b in self.poll()]

    def pump(self, until: Callable[[list[Batch]], bool], *, timeout: float = 20.0,
             between: Callable[[], None] | None = None) -> list[Batch]:
        """:meth:`poll` until ``until(every batch so far)``; a live source (a server's own
        thread) gets 10 ms between empty polls. ``between`` runs after each poll.

        :raises AssertionError: ``timeout`` seconds passed first.
        """
        deadline = time.monotonic() + timeout
        got: list[Batch] = []
        while True:
            batches = self.poll()
            got += batches
            if until(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {timeout} s with {len(got)} batches: "
                                     f"{[b.frame.height for b in got]}")
            if not batches:
                time.sleep(0.01)
            if between is not None:
                between()

    def sleep_until_awake(self) -> None:
        """On the wall clock: sleep until the partition's ``next_awake`` (a live test)."""
        awake = self.partition.next_awake()
        if awake is not None:
            time.sleep(max(0.0, (awake - self.ctx.now()).total_seconds()))

    @property
    def next_poll(self) -> datetime | None:
        """When the stream reads next (UTC; None: at once)."""
        return self.partition.next_poll

    def next_awake(self) -> datetime | None:
        """When bytewax would wake the partition next (UTC; None: at once)."""
        return self.partition.next_awake()

    def snapshot(self) -> PartitionState:
        """The partition's recoverable state, as bytewax snapshots it."""
        return self.partition.snapshot()

    def markers(self) -> list[Marker]:
        """This stream's markers in the ledger."""
        return [m for m in markers(self.ctx.home)
                if (m.asset, m.stream_type) == (self.stream.asset, self.stream.stream_type)]

    def close(self) -> None:
        """Close the partition (and so the reader); again is a no-op."""
        if not self._closed:
            self._closed = True
            self.partition.close()


def sink_partition(transmit: TransmitConfig, ctx: RunContext, resume_state: Any = None) -> Any:
    """The partition ``transmit``'s sink writes through on a single worker: a recoverable
    transmit's one partition (resumed from ``resume_state``), or worker 0's of 1. Its
    ``write_batch`` returns once the write is durable; close it after."""
    sink = transmit_sink(transmit, ctx)
    if hasattr(sink, "build_part"):
        return sink.build_part("step", sink.list_parts()[0], resume_state)
    return sink.build("step", 0, 1)


def store_once(outbox: Outbox, batches: list[Batch]) -> list[Batch]:
    """Store ``batches`` in ``outbox`` as an outbox writer does (one row a record, with their
    source positions, :mod:`dataflows.positions`): the batches, or parts of them, that were
    not stored before."""
    fresh = outbox.fresh(batches)
    outbox.append([(str(b.stream), None, b"") for b, _ in fresh for _ in range(b.frame.height)],
                  Update.merge([u for _, u in fresh]))
    return [b for b, _ in fresh if b.frame.height]


def poll_until(condition: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05,
               what: str = "the condition") -> T:
    """Call ``condition`` every ``interval`` seconds until it returns something true; that.

    :raises AssertionError: ``timeout`` seconds passed first (naming ``what`` and the last
        value).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s (last: {value!r})")
        time.sleep(interval)


def markers(home: Path) -> list[Marker]:
    """Every marker in the ledger of the installation at ``home`` (``GET /v1/streams``)."""
    from dataflows.home import ledger_path

    ledger = Ledger(ledger_path(home))
    try:
        return ledger.markers()
    finally:
        ledger.close()
