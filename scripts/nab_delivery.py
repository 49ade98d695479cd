"""NAB machine temperatures into Kafka and the Sight Machine cloud, through an outage and a crash.

The quickstart's shape with what runs here: a localfile receiver on the NAB machine
temperature CSV (rows appended in chunks while the dataflow runs, as a data logger
would), the quickstart's ``rename`` and ``convert_timestamps`` transforms, and two
transmits: ``rdpv3`` (Kafka, ``topic_prefix``) to a real broker this script starts, and
``remotedatapost`` to the Sight Machine simulator of ``tests/simulators/``, its
credentials taken from ``SIGHT_MACHINE_*`` as in the quickstart. During the run the
simulator answers 503 for ``--outage`` seconds and the dataflow is killed with SIGKILL
once and restarted. At the end it prints, for each transmit, the records received, the
distinct records, the missing ones and the duplicates.

    .venv/bin/python scripts/nab_delivery.py [--outage 30]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataflows.ledger import Ledger, ledger_path  # noqa: E402
from tests.conftest import NAB, NAB_ROWS  # noqa: E402
from tests.flowrun import FlowProcess  # noqa: E402
from tests.nab import expected_utc  # noqa: E402
from tests.services.kafka import kafka_broker  # noqa: E402
from tests.simulators.sightmachine import SightMachineSimulator  # noqa: E402

CSV = NAB / "machine_temperature_system_failure.csv"
TOPIC = "plant1.machine.temperature"


def config(directory: Path, bootstrap: str) -> dict[str, Any]:
    """The quickstart's transforms and transmit, with a localfile receiver and rdpv3 beside it."""
    return {
        "data_receiver": [{
            "data_receiver_name": "nab_files", "protocol": "localfile", "poll_interval": 1,
            "connections": [{"connection_name": "logger", "data_directory": str(directory)}],
            "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
            "streams": [{"asset": "machine", "stream_type": "temperature", "parser": "csv",
                         "file_filter": ["*.csv"]}]}],
        "transforms": [
            {"transform_name": "Rename", "transform_type": "rename", "filter_stream": ["*"],
             "renames": [{"from": "value", "to": "temperature"}]},
            {"transform_name": "Convert timestamps", "transform_type": "convert_timestamps",
             "filter_stream": ["*"], "field_names": ["timestamp"], "timezone": "America/Chicago"}],
        "data_transmit": [
            {"transmit_name": "MyTransmit_1", "transmit_type": "remotedatapost", "filter_stream": ["*"],
             "poll_interval": 1},
            {"transmit_name": "kafka", "transmit_type": "rdpv3", "bootstrap_servers": bootstrap,
             "topic_prefix": "plant1"}],
    }


def summary(name: str, keys: list[tuple[str, float]], expected: set[tuple[str, float]]) -> None:
    counts = Counter(keys)
    missing = expected - set(counts)
    extra = set(counts) - expected
    print(f"{name}: {len(keys):,} received, {len(counts):,} distinct, {len(missing):,} missing, "
          f"{len(extra):,} unexpected, {len(keys) - len(counts):,} duplicates")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outage", type=float, default=30.0, help="seconds of HTTP 503")
    parser.add_argument("--chunk", type=int, default=1000, help="rows appended per second")
    args = parser.parse_args()
    lines = CSV.read_bytes().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    with tempfile.TemporaryDirectory(prefix="factoryflow-delivery-") as tmp, \
            kafka_broker() as broker, SightMachineSimulator() as sim:
        tmp_path = Path(tmp)
        data = tmp_path / "in"
        data.mkdir()
        broker.create_topic(TOPIC, 3)
        os.environ.update({"SIGHT_MACHINE_BASE_URL": sim.base_url, "SIGHT_MACHINE_API_KEY": sim.api_key,
                           "SIGHT_MACHINE_API_KEY_ID": sim.api_key_id})
        flow = FlowProcess(tmp_path / "home", config(data, broker.bootstrap))
        target = data / "machine_temperature.csv"
        target.write_bytes(header)
        start = time.monotonic()
        flow.start()
        print(f"kafka {broker.bootstrap}, simulator {sim.base_url}; appending {NAB_ROWS:,} rows, "
              f"{args.chunk:,} per second")
        outage_at, outage_end, killed = 3.0, 3.0 + args.outage, False
        ledger = Ledger(ledger_path(flow.home))
        peak_outbox = 0
        try:
            for offset in range(0, len(rows), args.chunk):
                with target.open("ab") as out:
                    out.write(b"".join(rows[offset:offset + args.chunk]))
                elapsed = time.monotonic() - start
                if sim.mode == "ok" and outage_at <= elapsed < outage_end:
                    sim.mode = "503"
                    print(f"t={elapsed:5.1f}s simulator answers 503 for {args.outage:.0f} s")
                if not killed and elapsed >= 10:
                    flow.kill()
                    killed = True
                    print(f"t={elapsed:5.1f}s dataflow killed with SIGKILL "
                          f"({ledger.progress('kafka', 'machine:temperature')[0]:,} rows in Kafka so far)")
                    flow.start()
                    print(f"t={time.monotonic() - start:5.1f}s dataflow restarted")
                peak_outbox = max(peak_outbox, ledger.transmit_status("MyTransmit_1").outbox_records or 0)
                time.sleep(1)
            while time.monotonic() - start < outage_end:
                peak_outbox = max(peak_outbox, ledger.transmit_status("MyTransmit_1").outbox_records or 0)
                time.sleep(0.5)
            sim.mode = "ok"
            print(f"t={time.monotonic() - start:5.1f}s simulator answers 200 again "
                  f"(outbox peaked at {peak_outbox:,} records)")
            expected = expected_utc(CSV, "America/Chicago")
            flow.wait_for(lambda: len({(s["timestamp"], s["fieldvalues"]["temperature"]["value"])
                                       for s in sim.sslogs}) >= len(expected)
                          and ledger.transmit_status("MyTransmit_1").outbox_records == 0,
                          timeout=600, what="every record at the simulator")
            print(f"t={time.monotonic() - start:5.1f}s outbox drained; stopping with SIGTERM: "
                  f"exit {flow.stop(signal.SIGTERM)}")
        finally:
            flow.close()
        messages = broker.consume(TOPIC, NAB_ROWS)
        kafka_keys = [(r["timestamp"], r["temperature"]) for r in (json.loads(m.value) for m in messages)]
        sslog_keys = [(s["timestamp"].replace(".000000", "") + "Z", s["fieldvalues"]["temperature"]["value"])
                      for s in sim.sslogs]
        statuses = Counter(str(a.status) for a in sim.attempts)
        print(f"expected: {NAB_ROWS:,} rows, {len(expected):,} distinct (timestamp, temperature)")
        summary(f"kafka topic {TOPIC}", kafka_keys, expected)
        summary("simulator sslogs", sslog_keys, expected)
        print(f"simulator answers: {dict(statuses)}; posts accepted: {len(sim.posts):,}")
        status = ledger.transmit_status("MyTransmit_1")
        print(f"remotedatapost markers: delivered {status.records_delivered:,}, last success "
              f"{status.last_success_at}, outbox {status.outbox_records}, last error {status.last_error}")
        print(f"first kafka message: {messages[0].value.decode()}")
        print(f"first sslog: {sim.sslogs[0]}")


if __name__ == "__main__":
    main()
