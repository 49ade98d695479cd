"""The Sight Machine transmit's outbox reaches its disk budget while the endpoint answers
503: the receiver is held back (backpressure), nothing is dropped, a marker on the stream
says so, and everything is delivered once the endpoint is back (issue 15's chaos suite)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dataflows.ledger import Ledger, ledger_path
from dataflows.report import OUTBOX_FULL
from tests.simulators.sightmachine import SightMachineSimulator

BUDGET = 4 * 1024 * 1024  # the smallest the transmit takes
ROWS = 100_000


def test_a_full_outbox_holds_the_receiver_back_and_drops_nothing(
        tmp_path: Path, sight_machine: SightMachineSimulator, flows: Any) -> None:
    data = tmp_path / "in"
    data.mkdir()
    (data / "seq.csv").write_text("seq,value\n" + "".join(f"{n},{n * 0.5}\n" for n in range(ROWS)))
    sight_machine.mode = "503"
    config = {"data_receiver": [{"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 0.5,
                                 "chunk_bytes": 128 * 1024, "connections": [{"data_directory": str(data)}],
                                 "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                                 "streams": [{"asset": "nab", "stream_type": "csv", "parser": "csv",
                                              "file_filter": ["seq.csv"]}]}],
              "transforms": [], "data_transmit": [sight_machine.transmit(outbox_max_bytes=BUDGET)]}
    flow = flows(tmp_path / "home", config)
    flow.start()
    ledger = Ledger(ledger_path(flow.home))

    def full_marker() -> list[Any]:
        return [m for m in ledger.markers() if m.category == OUTBOX_FULL]

    flow.wait_for(lambda: bool(full_marker()), what="the outbox-full marker")
    (marker,) = full_marker()
    assert (marker.component, marker.component_type, marker.asset, marker.stream_type, marker.level) == (
        "sight_machine", "Transmit", "nab", "csv", "warning")
    assert "outbox.sqlite full" in marker.message and "nothing is dropped" in marker.message
    time.sleep(2)
    held = ledger.received().get(("files", "nab:csv"), 0)
    stored = ledger.transmit_status("sight_machine").outbox_records or 0
    time.sleep(2)
    assert ledger.received().get(("files", "nab:csv"), 0) == held < ROWS  # the receiver waits
    sight_machine.mode = "ok"
    flow.wait_for(lambda: len(sight_machine.sslogs) >= ROWS, timeout=120, what="every row delivered")
    flow.wait_for(lambda: not full_marker(), what="the marker cleared")
    assert flow.stop(signal.SIGTERM) == 0
    received = Counter(int(s["fieldvalues"]["seq"]["value"]) for s in sight_machine.sslogs)
    assert set(received) == set(range(ROWS)) and sum(received.values()) == ROWS  # nothing dropped or twice
    print(f"\noutbox budget {BUDGET} bytes reached: the receiver held at {held} of {ROWS} rows read "
          f"({stored} in the outbox); after the endpoint came back {len(received)} rows delivered, 0 dropped")
