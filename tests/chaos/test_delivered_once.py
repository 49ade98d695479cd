"""Delivered once (issue 28): SIGKILLs of the main job at random moments of a 200,000-row SQL
backfill and of a 2,000-file CSV backfill, into Kafka with ``delivery_guarantee:
exactly_once`` and into the Sight Machine simulator at once. A ``read_committed`` consumer
counts every row exactly once; the Sight Machine gets every row, and at most one post again
per kill (the post in flight: RDPv2 has no idempotency key)."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.flowrun import FlowProcess
from tests.services.kafka import KafkaBroker
from tests.services.postgres import Postgres
from tests.simulators.sightmachine import SightMachineSimulator

ROWS = 200_000
KILLS = 20
#: Records per Sight Machine post (the transmit's ``max_request_records``).
POST_RECORDS = 2000


def _kill_at_random_moments(flow: FlowProcess, seed: int, kills: int = KILLS) -> list[float]:
    """Start and SIGKILL ``flow`` ``kills`` times, each after a random 1 to 4 s, then start it
    once more; the moments, for the report."""
    rng = random.Random(seed)
    points = []
    for _ in range(kills):
        flow.start()
        points.append(round(rng.uniform(1.0, 4.0), 2))
        time.sleep(points[-1])
        flow.kill()
    flow.start()
    return points


def _check(flow: FlowProcess, kafka: KafkaBroker, topic: str, sight_machine: SightMachineSimulator,
           key: str, points: list[float]) -> None:
    """Every row once in Kafka (read_committed), every row at the Sight Machine with at most
    one post again per kill; the counts printed."""
    def at_sight_machine() -> Counter[int]:
        return Counter(int(s["fieldvalues"][key]["value"]) for s in sight_machine.sslogs)

    flow.wait_for(lambda: len(at_sight_machine()) == ROWS, timeout=300, what="every row at the Sight Machine")
    messages = kafka.consume(topic, ROWS, timeout=180)
    assert flow.stop(signal.SIGTERM) == 0
    in_kafka = Counter(json.loads(m.value)[key] for m in messages)
    sight = at_sight_machine()
    print(f"\nSIGKILLs after {points} s of each run; {ROWS} rows; Kafka (exactly_once, read_committed): "
          f"{sum(in_kafka.values())} messages, {len(in_kafka)} distinct, {sum(in_kafka.values()) - len(in_kafka)} "
          f"duplicates; Sight Machine: {sum(sight.values())} sslogs, {len(sight)} distinct, "
          f"{sum(sight.values()) - len(sight)} duplicates (at most {len(points)} posts of {POST_RECORDS})")
    expected = set(range(ROWS))
    assert set(in_kafka) == expected and set(sight) == expected  # nothing lost, nothing invented
    assert sum(in_kafka.values()) == ROWS  # nothing twice
    assert sum(sight.values()) - ROWS <= len(points) * POST_RECORDS


def _transmits(kafka: KafkaBroker, topic: str, sight_machine: SightMachineSimulator) -> list[dict[str, Any]]:
    return [{"transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": kafka.bootstrap,
             "topic": topic, "delivery_guarantee": "exactly_once"},
            sight_machine.transmit(max_request_records=POST_RECORDS)]


#: The two kinds of SQL position: an ordered cursor, and a timestamp with ``lag`` (rows known
#: by their ``primary_key`` within the window).
CURSORS = {
    "id": {"query": "SELECT id, ts AS timestamp, value FROM backfill WHERE id > :id ORDER BY id",
           "state_fields": [{"column_name": "id", "data_type": "integer", "initial_value": -1}]},
    "timestamp with lag": {
        "query": "SELECT id, ts AS timestamp, value FROM backfill WHERE ts > :timestamp ORDER BY ts",
        "state_fields": [{"column_name": "timestamp", "data_type": "timestamp",
                          "initial_value": "2025-12-31T00:00:00"}],
        "lag": 5, "primary_key": ["id"]},
}


@pytest.mark.parametrize("cursor", list(CURSORS))
def test_twenty_sigkills_of_a_sql_backfill_deliver_every_row_once(
        tmp_path: Path, postgres: Postgres, kafka: KafkaBroker, sight_machine: SightMachineSimulator,
        flows: Any, cursor: str) -> None:
    engine = sa.create_engine(postgres.url)
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE IF EXISTS backfill"))
        db.execute(sa.text("CREATE TABLE backfill (id INTEGER PRIMARY KEY, ts TIMESTAMP, value DOUBLE PRECISION)"))
        db.execute(sa.text("INSERT INTO backfill SELECT n, TIMESTAMP '2026-01-01' + n * INTERVAL '1 second', "
                           "n * 0.25 FROM generate_series(0, :last) AS n"), {"last": ROWS - 1})
    engine.dispose()
    topic = f"once.sql.{cursor.replace(' ', '_')}"
    kafka.create_topic(topic, 3)
    config = {
        "data_receiver": [{"data_receiver_name": "db", "protocol": "sql", "poll_interval": 0.5, "chunk_size": 5000,
                           "connections": [postgres.connection()],
                           "streams": [{"asset": "chaos", "stream_type": "backfill", **CURSORS[cursor]}]}],
        "transforms": [], "data_transmit": _transmits(kafka, topic, sight_machine)}
    flow = flows(tmp_path / "home", config)
    points = _kill_at_random_moments(flow, seed=28)
    _check(flow, kafka, topic, sight_machine, "id", points)


def test_twenty_sigkills_of_a_2000_file_backfill_deliver_every_row_once(
        tmp_path: Path, kafka: KafkaBroker, sight_machine: SightMachineSimulator, flows: Any) -> None:
    data = tmp_path / "in"
    data.mkdir()
    per_file = ROWS // 2000
    for f in range(2000):
        rows = "".join(f"{n},2026-01-01T00:00:00Z,{n * 0.25}\n" for n in range(f * per_file, (f + 1) * per_file))
        (data / f"part-{f:04d}.csv").write_text("n,timestamp,value\n" + rows)
    kafka.create_topic("once.files", 3)
    config = {
        "data_receiver": [{"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 0.5,
                           "connections": [{"data_directory": str(data)}],
                           "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                           "streams": [{"asset": "chaos", "stream_type": "files", "parser": "csv",
                                        "file_filter": ["*.csv"]}]}],
        "transforms": [], "data_transmit": _transmits(kafka, "once.files", sight_machine)}
    flow = flows(tmp_path / "home", config)
    points = _kill_at_random_moments(flow, seed=2028)
    _check(flow, kafka, "once.files", sight_machine, "n", points)
