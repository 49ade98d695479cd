"""Records per minute of each stream over the last hour, for the web UI's sparklines.

The ledger keeps totals only (records read per receiver and stream). The API samples them
every ``interval`` seconds (60 by default) for as long as it runs and keeps the last hour
of samples in memory; a stream's rate for an interval is the growth of its total over it,
in records per minute. After the API restarts, the history starts again.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from dataflows.ledger import Ledger

_log = logging.getLogger("api")


class RecordRates:
    """Samples of the ledger's ``received`` totals; thread-safe.

    :param interval: seconds between samples (60: one point a minute).
    :param span: seconds of history kept (3600: the last hour).
    """

    def __init__(self, interval: float = 60.0, span: float = 3600.0) -> None:
        self.interval = interval
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=int(span / interval) + 1)
        self._lock = threading.Lock()

    def sample(self, totals: dict[tuple[str, str], int], at: float | None = None) -> None:
        """Record the totals (``(receiver, stream) -> records``) read at ``at`` (monotonic s)."""
        by_stream = {f"{receiver}\0{stream}": n for (receiver, stream), n in totals.items()}
        with self._lock:
            self._samples.append((time.monotonic() if at is None else at, by_stream))

    def per_minute(self, receiver: str, stream: str) -> list[float]:
        """Records per minute of each interval between samples, oldest first ([] before the
        second sample); an interval whose total went down (the ledger was reset) counts 0."""
        key = f"{receiver}\0{stream}"
        with self._lock:
            samples = list(self._samples)
        out = []
        for (t0, before), (t1, after) in itertools.pairwise(samples):
            grown = max(0, after.get(key, 0) - before.get(key, 0))
            out.append(round(grown * 60.0 / (t1 - t0), 1) if t1 > t0 else 0.0)
        return out

    def run(self, ledger: Callable[[], Ledger], stop: threading.Event) -> None:
        """Sample the ledger now and every ``interval`` seconds until ``stop`` is set."""
        while True:
            try:
                connection = ledger()
                try:
                    self.sample(connection.received())
                finally:
                    connection.close()
            except Exception:  # a bad sample must not end the sampling: log it, go on
                _log.exception("sampling the ledger for the records-per-minute history failed")
            if stop.wait(self.interval):
                return
