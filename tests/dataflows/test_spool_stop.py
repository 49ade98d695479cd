"""The stop of a transmit's forwarder says what it leaves (issue 25, item 7): a forwarder
that has not ended by the deadline is ended, with a warning naming the batches left in
the spool, and no warning at all when nothing is left (everything was acknowledged)."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dataflows.outbox import Outbox
from dataflows.spool import _ForwarderProcess


def stuck_forwarder(spool: Path) -> SimpleNamespace:
    """A forwarder process that never ends by itself (a client's close that hangs)."""
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,), daemon=True)
    process.start()
    records, sender = multiprocessing.Pipe(duplex=False)
    sender.close()
    forwarder = SimpleNamespace(_process=process, _path=spool, _log=logging.getLogger("transmit.sm"),
                                _keeper=threading.Thread(target=lambda: None), _records=records,
                                ask_to_stop=lambda: None)
    forwarder._waiting = lambda: _ForwarderProcess._waiting(forwarder)  # type: ignore[arg-type]
    forwarder._keeper.start()
    return forwarder


@pytest.mark.parametrize("left", [0, 3])
def test_a_forwarder_that_does_not_end_is_ended_and_the_line_says_what_is_left(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, left: int) -> None:
    spool = Outbox(tmp_path / "spool.sqlite")
    spool.append([("line:csv", None, b"x")] * left)
    spool.close()
    forwarder = stuck_forwarder(tmp_path / "spool.sqlite")
    with caplog.at_level(logging.INFO, logger="transmit.sm"):
        _ForwarderProcess.stop(forwarder, timeout=0.5)  # type: ignore[arg-type]
    assert not forwarder._process.is_alive()
    (line,) = [r for r in caplog.records if r.name == "transmit.sm"]
    if left:
        assert line.levelno == logging.WARNING
        assert line.getMessage() == ("the forwarder is still waiting for the endpoint; 3 batches in the spool "
                                     "are sent at the next start")
    else:
        assert line.levelno == logging.INFO
        assert "waiting for the endpoint" not in line.getMessage()
        assert line.getMessage().startswith("the forwarder had not ended 0 s after the stop, with nothing left")
