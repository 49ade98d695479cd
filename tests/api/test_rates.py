"""The records-per-minute history behind the web UI's sparklines."""

from __future__ import annotations

import threading
from pathlib import Path

from api.rates import RecordRates
from dataflows.ledger import Ledger, ledger_path


def test_rates_are_the_growth_per_minute_between_samples() -> None:
    rates = RecordRates(interval=60, span=180)
    assert rates.per_minute("r", "a:b") == []
    for at, total in [(0, 0), (60, 120), (120, 150), (180, 150), (240, 30)]:
        rates.sample({("r", "a:b"): total, ("r", "c:d"): at}, at=at)
    # the last hour here is 180 s: three intervals kept; a total that went down counts 0
    assert rates.per_minute("r", "a:b") == [30.0, 0.0, 0.0]
    assert rates.per_minute("r", "c:d") == [60.0, 60.0, 60.0]
    assert rates.per_minute("other", "a:b") == [0.0, 0.0, 0.0]


def test_the_sampler_reads_the_ledger_until_stopped(tmp_path: Path) -> None:
    ledger = Ledger(ledger_path(tmp_path))
    ledger.record_received("r", "a:b", 10)
    rates = RecordRates(interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=rates.run, args=(lambda: Ledger(ledger_path(tmp_path)), stop))
    thread.start()
    threading.Event().wait(0.12)
    ledger.record_received("r", "a:b", 5)
    threading.Event().wait(0.12)
    stop.set()
    thread.join(2)
    assert not thread.is_alive()
    per_minute = rates.per_minute("r", "a:b")
    assert len(per_minute) >= 3 and sum(1 for v in per_minute if v > 0) == 1  # the 5 records, once
