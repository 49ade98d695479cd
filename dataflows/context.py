"""What a running component gets from the installation: :class:`RunContext`.

The runtime builds one per dataflow (tests build their own, with a controllable clock
from :mod:`dataflows.testing`). Through it a connector reaches everything it needs per
worker without opening core files by hand:

- ``home`` and :meth:`RunContext.component_dir`: where its own data lives;
- ``now``: the clock (UTC-aware); everything the runtime times goes through it;
- ``shutdown``: set when the dataflow stops gracefully;
- :meth:`RunContext.storage`: a durable SQLite file of its own, with one
  ``transaction()`` context manager (:class:`~dataflows.storage.Storage`);
- :meth:`RunContext.acknowledgements`: for a receiver that acts once its records are
  delivered (``delete_completed``, the MQTT buffer), whether every transmit its stream
  reaches has acknowledged a batch.

Transmits get their ledger handle, :class:`~dataflows.report.TransmitReport`, as
``open_writer``'s ``report``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dataflows import home as layout
from dataflows.diskspace import DiskGuard
from dataflows.ledger import Ledger
from dataflows.records import StreamKey
from dataflows.storage import Storage

__all__ = ["READ_WAIT", "Acknowledgements", "RunContext", "utcnow"]

#: The dataflow's :attr:`RunContext.read_wait`, in seconds: most reads (a poll that finds
#: nothing, a chunk of rows) return sooner, so the worker hands their batches on at once.
READ_WAIT = 0.05


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Acknowledgements:
    """The delivery acknowledgements of one receiver stream's batches, by ``ack_key``
    (see :class:`~dataflows.records.Batch`): a batch is delivered once every transmit in
    ``expected`` acknowledged it. Opens the ledger on first use; one thread at a time.

    :param home: ``$FACTORYFLOW_HOME``.
    :param receiver: the ``data_receiver_name``.
    :param stream: the stream.
    :param expected: the transmits the stream's records reach.
    """

    def __init__(self, home: Path, receiver: str, stream: StreamKey, expected: frozenset[str]) -> None:
        self._home = home
        self._receiver = receiver
        self._stream = str(stream)
        self.expected = expected
        self._ledger: Ledger | None = None

    def _open(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(layout.ledger_path(self._home))
        return self._ledger

    def delivered(self, ack_key: str) -> bool:
        """Whether every expected transmit acknowledged the batch ``ack_key``."""
        return self.expected <= self._open().acked_by(self._receiver, self._stream, ack_key)

    def delivered_prefix(self, ack_keys: list[str]) -> list[str]:
        """The longest run of ``ack_keys`` (oldest first) that is delivered: what a
        receiver may act on without skipping an undelivered batch."""
        done: list[str] = []
        for key in ack_keys:
            if not self.delivered(key):
                break
            done.append(key)
        return done

    def forget(self, ack_key: str) -> None:
        """Drop the acknowledgements of ``ack_key``, once the receiver acted on them."""
        self._open().forget(self._receiver, self._stream, ack_key)

    def close(self) -> None:
        """Close the ledger connection, if one was opened."""
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


#: Set by ``factoryflow run --addresses`` to its ``--process-id``: the processes of the
#: cluster each have their own home (:attr:`RunContext.cluster_process`).
CLUSTER_PROCESS_ENV = "FACTORYFLOW_CLUSTER_PROCESS"


def cluster_process() -> int | None:
    """The process id :data:`CLUSTER_PROCESS_ENV` gives, or None (not set, or not a number)."""
    value = os.environ.get(CLUSTER_PROCESS_ENV, "")
    return int(value) if value.isdigit() else None


@dataclass(frozen=True)
class RunContext:
    """What components need from the running installation.

    :ivar home: ``$FACTORYFLOW_HOME``: component data and state live below it.
    :ivar shutdown: set when the dataflow should stop gracefully.
    :ivar now: the clock (UTC-aware); tests inject their own
        (:class:`dataflows.testing.Clock`).
    :ivar expected_transmits: for ``(receiver name, stream)``, the transmits its records
        reach; a receiver waiting for delivery needs an acknowledgement from each.
    :ivar recovery: bytewax's recovery directory of this run; None: no state is kept.
    :ivar disk: the free-space floors of the volumes the job writes; the receivers wait
        while one is below its floor (:mod:`dataflows.diskspace`). None: not watched.
    :ivar read_wait: how long (seconds) a stream's partition waits for a read it started
        before it lets the worker's other partitions run (the read goes on in the stream's
        own thread, see :mod:`dataflows.runtime`); None: until the read returns, as tests
        that drive one partition want. The dataflow uses :data:`READ_WAIT`.
    :ivar shard: in a spool's forwarder (:mod:`dataflows.spool`), its shard: 0 to the
        workers' count - 1 (a Kafka writer's transactional id ends with it).
    :ivar cluster_process: this process's id in a bytewax cluster whose processes each have
        their own home (``factoryflow run --addresses``, which sets
        :data:`CLUSTER_PROCESS_ENV` for the job and its forwarders); None otherwise. Each
        home starts its own forwarders, so what names a forwarder across the cluster (a
        Kafka writer's transactional id) carries it.
    """

    home: Path
    shutdown: threading.Event = field(default_factory=threading.Event)
    now: Callable[[], datetime] = utcnow
    expected_transmits: Mapping[tuple[str, StreamKey], frozenset[str]] = field(default_factory=dict)
    read_wait: float | None = None
    recovery: Path | None = None
    disk: DiskGuard | None = None
    shard: int = 0
    cluster_process: int | None = field(default_factory=cluster_process)

    def component_dir(self, name: str) -> Path:
        """``$FACTORYFLOW_HOME/components/<name>``, the data directory of a component."""
        return layout.component_dir(self.home, name)

    def written_directories(self) -> list[Path]:
        """The directories the job writes: the home, its state directory, the recovery
        directory and each component's directory (any may be a volume of its own)."""
        components = layout.components_dir(self.home)
        found = sorted(p for p in components.iterdir() if p.is_dir()) if components.is_dir() else []
        return [self.home, layout.state_dir(self.home), *([self.recovery] if self.recovery else []), *found]

    def recovery_generation(self) -> str | None:
        """The id of the recovery store this run resumes from and snapshots to (the same
        across restarts, new after a start over: :func:`dataflows.home.recovery_generation`);
        None without recovery.

        :raises OSError: the recovery directory cannot be read or written.
        """
        return None if self.recovery is None else layout.recovery_generation(self.recovery)

    def storage(self, component: str, file: str, schema: str) -> Storage:
        """A durable SQLite file of ``component``'s own, ``components/<component>/<file>``,
        with ``schema`` applied (``CREATE TABLE IF NOT EXISTS ...``). The caller closes it.

        :raises sqlite3.Error: the file cannot be opened or is not a database.
        """
        return Storage(self.component_dir(component) / file, schema)

    def acknowledgements(self, receiver: str, stream: StreamKey) -> Acknowledgements:
        """The delivery acknowledgements of ``receiver``'s ``stream`` (no I/O until used;
        the caller closes it)."""
        return Acknowledgements(self.home, receiver, stream,
                                self.expected_transmits.get((receiver, stream), frozenset()))
