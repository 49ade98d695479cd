"""The one backoff policy: doubling with jitter, capped so a down endpoint is probed at
least every 30 s by a failing stream (fake clock) and by the Sight Machine sender."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from dataflows.backoff import ENDPOINT_BACKOFF, MAX_BACKOFF, Backoff, stream_backoff
from dataflows.config import load
from dataflows.sdk import RunContext
from dataflows.testing import Clock, StreamDriver
from tests.services.process import free_port


def test_delays_double_with_jitter_up_to_the_cap() -> None:
    policy = Backoff(initial=2.0, maximum=30.0, jitter=0.5)
    for attempt in range(1, 5):
        assert 2.0 * 2 ** (attempt - 1) <= policy.delay(attempt) <= 2.0 * 2 ** (attempt - 1) + 0.5
    assert {policy.delay(attempt) for attempt in range(5, 40)} == {30.0}
    assert MAX_BACKOFF == 30.0
    assert max(ENDPOINT_BACKOFF.delay(n) for n in range(1, 40)) == 30.0
    assert max(stream_backoff(5.0).delay(n) for n in range(1, 40)) == 30.0
    assert Backoff(1.0, 60.0, 0.0).delay(3) == 4.0  # no jitter: exact


def test_a_failing_stream_is_polled_at_least_every_30_seconds(tmp_path: Path) -> None:
    doc = {"transforms": [], "data_transmit": [{"transmit_name": "t", "transmit_type": "localfile"}],
           "data_receiver": [{"data_receiver_name": "db", "protocol": "sql", "poll_interval": 5,
                              "connections": [{"database_type": "postgresql", "host": "127.0.0.1",
                                               "port": free_port(), "database_name": "none",
                                               "username": "u", "password": "p"}],
                              "streams": [{"asset": "a", "stream_type": "b", "query": "SELECT 1"}]}]}
    receiver = load(doc).data_receiver[0]
    clock = Clock(datetime(2024, 1, 1, tzinfo=UTC))
    partition = StreamDriver(receiver, RunContext(home=tmp_path, now=clock))
    gaps = []
    for _ in range(8):  # connection refused every time
        assert partition.next_batch() == []
        assert partition.next_poll is not None
        gaps.append((partition.next_poll - clock.now).total_seconds())
        clock.now = partition.next_poll
    partition.close()
    assert 5.0 <= gaps[0] <= 5.5 and gaps[-3:] == [30.0, 30.0, 30.0], gaps
