"""The ledger's SQLite file under concurrent first use."""

from __future__ import annotations

import threading
from pathlib import Path

from dataflows.ledger import Ledger


def _open_at_once(path: Path, connections: int) -> list[BaseException]:
    """Open ``connections`` ledgers on ``path`` from as many threads released together, each
    recording a delivery; the errors they raised."""
    start = threading.Barrier(connections)
    errors: list[BaseException] = []

    def open_and_write(n: int) -> None:
        start.wait()
        try:
            Ledger(path).record_delivery(f"t{n}", "a:s", 1, None)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_and_write, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_many_threads_create_the_same_ledger_at_once(tmp_path: Path) -> None:
    """The API's rate sampler and a transmit may both create the ledger at start-up; the
    switch to WAL of a brand-new file must wait for the other connection, not fail with
    ``database is locked`` (seen once in CI)."""
    for attempt in range(20):
        path = tmp_path / f"attempt{attempt}" / "ledger.sqlite"
        assert _open_at_once(path, 8) == []
        assert Ledger(path).progress("t3", "a:s") == (1, None)
