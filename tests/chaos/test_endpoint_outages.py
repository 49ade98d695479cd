"""Both endpoints fail at once while rows keep arriving: the Kafka broker is SIGKILLed and
restarted 30 s later; the Sight Machine simulator answers 503 for those 30 s, then hangs
without answering for 20 s. Nothing is lost, the outbox drains, and the dataflow's memory
stays bounded (issue 15's chaos suite)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from dataflows.ledger import Ledger, ledger_path
from tests.conftest import NAB_ROWS
from tests.connectors.transmits.test_kafka import growing_nab, nab_receiver, nab_values
from tests.services.kafka import kafka_broker
from tests.simulators.sightmachine import SightMachineSimulator

TOPIC = "chaos.outages"


def pairs(simulator: SightMachineSimulator) -> Counter[tuple[str, float]]:
    """(timestamp, value) of each sslog received (NAB repeats a few timestamps)."""
    return Counter((s["timestamp"], s["fieldvalues"]["value"]["value"]) for s in simulator.sslogs)


def test_kafka_killed_and_the_sight_machine_failing_lose_nothing(
        tmp_path: Path, nab_machine_csv: Path, sight_machine: SightMachineSimulator, flows: Any) -> None:
    data, target, rows = growing_nab(tmp_path, nab_machine_csv, 6000)
    with kafka_broker() as broker:  # its own broker: the session's is never stopped
        broker.create_topic(TOPIC, 3)
        config = {"data_receiver": [nab_receiver(data, ["nab"])], "transforms": [],
                  "data_transmit": [{"transmit_name": "kafka", "transmit_type": "kafka",
                                     "bootstrap_servers": broker.bootstrap, "topic": TOPIC},
                                    sight_machine.transmit()]}
        flow = flows(tmp_path / "home", config)
        flow.start()
        ledger = Ledger(ledger_path(flow.home))
        flow.wait_for(lambda: ledger.progress("kafka", "nab:csv")[0] >= 6000
                      and len(sight_machine.sslogs) >= 6000, what="the first rows at both")
        assert flow.proc is not None
        process, peak = psutil.Process(flow.proc.pid), [0]
        sampling = threading.Event()

        def sample() -> None:  # the dataflow's resident memory through the outages
            while not sampling.is_set():
                try:
                    peak[0] = max(peak[0], process.memory_info().rss)
                except psutil.Error:
                    return  # it died: wait_for below says so, with its log
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        broker.kill()
        sight_machine.mode = "503"
        with target.open("ab") as out:  # rows keep arriving
            out.write(b"".join(rows[6000:15000]))
        time.sleep(30)
        delivered_while_down = ledger.progress("kafka", "nab:csv")[0]
        outbox_while_down = ledger.transmit_status("sight_machine").outbox_records
        broker.start()
        sight_machine.hang_seconds, sight_machine.mode = 20.0, "hang"
        with target.open("ab") as out:
            out.write(b"".join(rows[15000:]))
        time.sleep(20)
        sight_machine.mode = "ok"
        flow.wait_for(lambda: ledger.progress("kafka", "nab:csv")[0] >= NAB_ROWS
                      and len(pairs(sight_machine)) >= NAB_ROWS
                      and ledger.transmit_status("sight_machine").outbox_records == 0,
                      timeout=240, what="every row at both, the outbox drained")
        sampling.set()
        sampler.join()
        assert flow.stop(signal.SIGTERM) == 0
        messages = broker.consume(TOPIC, NAB_ROWS)
    in_kafka = Counter(json.loads(m.value)["value"] for m in messages)
    expected = Counter(nab_values(nab_machine_csv))
    assert not expected - in_kafka  # every row at least once
    at_sight_machine = pairs(sight_machine)
    assert len(at_sight_machine) == NAB_ROWS
    assert delivered_while_down == 6000  # nothing counted delivered while the broker was down
    assert outbox_while_down is not None and outbox_while_down >= 9000  # held durably meanwhile
    assert peak[0] < 1024 ** 3
    print(f"\nKafka SIGKILLed 30 s, Sight Machine 503 for 30 s then hanging 20 s; {NAB_ROWS} rows expected; "
          f"Kafka: {sum(in_kafka.values())} messages ({sum(in_kafka.values()) - NAB_ROWS} duplicates); "
          f"Sight Machine: {sum(at_sight_machine.values())} sslogs "
          f"({sum(at_sight_machine.values()) - NAB_ROWS} duplicates); outbox held {outbox_while_down} "
          f"records during the outage and drained to 0; dataflow peak RSS {peak[0] / 2**20:.0f} MB")
