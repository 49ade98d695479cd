"""The ledger's SQLite file under concurrent first use."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from dataflows.ledger import Ledger, Marker, marker_time


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


def test_a_write_on_a_full_disk_waits_for_space(tmp_path: Path) -> None:
    from tests.chaos.test_disk_full import tmpfs

    with tmpfs(tmp_path / "state", "4m") as state:
        ledger = Ledger(state / "ledger.sqlite")
        ledger.record_received("files", "a:s", 1)
        ballast = state / "ballast"
        with contextlib.suppress(OSError), ballast.open("wb", buffering=0) as out:  # the volume full
            while True:
                out.write(b"\0" * 4096)
        done = threading.Event()

        def count() -> None:
            for _ in range(200):  # rows enough to need new pages
                ledger.set_marker(Marker(component="files", component_type="Receiver", asset="a",
                                         stream_type=f"s{_}", category="x" * 200, timestamp=marker_time(),
                                         level="warning", message="m" * 2000))
            done.set()

        writer = threading.Thread(target=count, daemon=True)
        writer.start()
        assert not done.wait(2)  # waiting, not failing
        ballast.unlink()
        assert done.wait(10)
        assert len(ledger.markers()) == 200
        ledger.close()
