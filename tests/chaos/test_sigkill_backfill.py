"""SIGKILL of the main job at 5 random points of a 200,000-row SQL backfill into Kafka and
the Sight Machine simulator at once: every row reaches each at least once; the duplicates
(replays of what was read after the last snapshot) are counted and printed (issue 15's
chaos suite)."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.services.kafka import KafkaBroker
from tests.services.postgres import Postgres
from tests.simulators.sightmachine import SightMachineSimulator

ROWS = 200_000
TOPIC = "chaos.backfill"


def test_sigkill_at_five_random_points_of_a_backfill_loses_no_row(
        tmp_path: Path, postgres: Postgres, kafka: KafkaBroker, sight_machine: SightMachineSimulator,
        flows: Any) -> None:
    engine = sa.create_engine(postgres.url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS backfill"))
        db.execute(sa.text("CREATE TABLE backfill (id INTEGER PRIMARY KEY, ts TIMESTAMP, value DOUBLE PRECISION)"))
        db.execute(sa.text("INSERT INTO backfill SELECT n, TIMESTAMP '2026-01-01' + n * INTERVAL '1 second', "
                           "n * 0.25 FROM generate_series(1, :rows) AS n"), {"rows": ROWS})
    engine.dispose()
    kafka.create_topic(TOPIC, 3)
    config = {
        "data_receiver": [{"data_receiver_name": "db", "protocol": "sql", "poll_interval": 0.5, "chunk_size": 5000,
                           "connections": [postgres.connection()],
                           "streams": [{"asset": "chaos", "stream_type": "backfill",
                                        "query": "SELECT id, ts AS timestamp, value FROM backfill "
                                                 "WHERE id > :id ORDER BY id",
                                        "state_fields": [{"column_name": "id", "data_type": "integer",
                                                          "initial_value": 0}]}]}],
        "transforms": [],
        "data_transmit": [{"transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": kafka.bootstrap,
                           "topic": TOPIC},
                          sight_machine.transmit()]}
    flow = flows(tmp_path / "home", config)
    rng = random.Random(15)
    points = []
    snapshots = []  # per run: when (seconds after its start) a snapshot was committed
    for _ in range(5):
        flow.start()
        points.append(round(rng.uniform(1.0, 4.0), 2))
        started, committed, at = time.monotonic(), flow.committed_epoch(), []
        while time.monotonic() - started < points[-1]:  # mid-backfill: every run is cut short
            if flow.committed_epoch() > committed:
                committed = flow.committed_epoch()
                at.append(round(time.monotonic() - started, 1))
            time.sleep(0.05)
        snapshots.append(at)
        flow.kill()
    flow.start()

    def sight_machine_ids() -> Counter[int]:
        return Counter(int(s["fieldvalues"]["id"]["value"]) for s in sight_machine.sslogs)

    flow.wait_for(lambda: len(sight_machine_ids()) == ROWS, timeout=240, what="every row at the Sight Machine")
    messages = kafka.consume(TOPIC, ROWS, timeout=120)
    assert flow.stop(signal.SIGTERM) == 0
    in_kafka = Counter(json.loads(m.value)["id"] for m in messages)
    at_sight_machine = sight_machine_ids()
    expected = set(range(1, ROWS + 1))
    assert set(in_kafka) == expected  # every row at least once, nothing invented
    assert set(at_sight_machine) == expected
    print(f"\nsnapshots committed (snapshot interval 1 s) at {snapshots} s of each run")
    for run, at in zip(points, snapshots, strict=True):  # a backfill spans many epochs
        assert run < 3.5 or len(at) >= 1, (points, snapshots)
    print(f"\nSIGKILLs after {points} s of each run; {ROWS} rows expected; "
          f"Kafka: {sum(in_kafka.values())} messages, {sum(in_kafka.values()) - ROWS} duplicates; "
          f"Sight Machine: {sum(at_sight_machine.values())} sslogs, "
          f"{sum(at_sight_machine.values()) - ROWS} duplicates")
