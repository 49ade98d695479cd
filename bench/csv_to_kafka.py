"""Throughput and peak memory of the main job: a big CSV file to Kafka.

Replicates the NAB machine temperature series to ``--rows`` rows (see
``csv_to_localfile.py``), starts a real single-node Kafka broker (KRaft, the test suite's,
jars from Maven Central), creates the topic with ``--partitions`` partitions, and runs
``python -m bytewax.run dataflows.main:flow``: localfile receiver, ``convert_timestamps``
(America/Chicago), ``kafka`` transmit (defaults: acks=all, idempotence, lz4). Prints rows/s
from process start to the last broker acknowledgement, the dataflow's peak RSS, and the
topic's message count read back from the broker's offsets.

    .venv/bin/python bench/csv_to_kafka.py --rows 1000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.csv_to_localfile import PLANT_TIME, csv_receiver, make_csv, run_until_delivered  # noqa: E402
from tests.services.kafka import kafka_broker  # noqa: E402


def topic_messages(bootstrap: str, topic: str, partitions: int) -> int:
    """Messages in ``topic``: the sum of its partitions' high watermarks."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench"})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                   for p in range(partitions))
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--compression", default="lz4", help="compression.type (lz4, zstd, none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="factoryflow-bench-") as tmp, kafka_broker() as broker:
        home = Path(tmp)
        (home / "in").mkdir()
        make_csv(home / "in" / "big.csv", args.rows)
        size = (home / "in" / "big.csv").stat().st_size
        broker.create_topic("bench", args.partitions)
        config = {"data_receiver": [csv_receiver(home / "in")], "transforms": [PLANT_TIME],
                  "data_transmit": [{"transmit_name": "kafka", "transmit_type": "kafka",
                                     "bootstrap_servers": broker.bootstrap, "topic": "bench",
                                     "options": {"compression.type": args.compression}}]}
        elapsed, peak_mb = run_until_delivered(home, config, "kafka", args.rows)
        on_topic = topic_messages(broker.bootstrap, "bench", args.partitions)
        print(f"rows: {args.rows:,} ({size / 1e6:.1f} MB of CSV), topic 'bench' with "
              f"{args.partitions} partitions, compression {args.compression}")
        print(f"elapsed: {elapsed:.2f} s (process start to the broker's last acknowledgement)")
        print(f"throughput: {args.rows / elapsed:,.0f} rows/s")
        print(f"peak RSS of the dataflow: {peak_mb:,.0f} MB")
        print(f"messages on the topic: {on_topic:,}")


if __name__ == "__main__":
    main()
