"""The opcua receiver across gaps and failures (docs/opcua.md, "Gaps"): servers run as
processes and are SIGKILLed or cut off by a proxy; asyncua's server with its history in
SQLite, node-opcua's with its in-memory historian."""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.connectors.receivers.test_opcua import Live, receiver
from tests.services.opcua import asyncua_history_server, node_opcua_plant
from tests.services.tcp_proxy import TcpProxy

TAGS = 50


def plant_tags(count: int = TAGS) -> list[dict[str, Any]]:
    """The asyncua history server's tags (``ns=2;i=1000``...) as ``tag<i>``."""
    return [{"name": f"ns=2;i={1000 + i}", "exportname": f"tag{i}"} for i in range(count)]


def delivered(live: Live, export: str) -> list[tuple[datetime, float, bool]]:
    """``(source timestamp, value, backfill)`` of every record of ``export``, in order."""
    return [(r["timestamp"], r[export], r["backfill"]) for r in live.rows() if r[export] is not None]


def check_exact(live: Live, history: list[tuple[datetime, float]], export: str) -> dict[str, int]:
    """What ``export`` delivered against what the server historized, between the first
    value delivered and the last one delivered live: equal, in order, nothing twice."""
    got = delivered(live, export)
    first, last_live = got[0][0], max(s for s, _, b in got if not b)
    expected = [(s, v) for s, v in history if first <= s <= last_live]
    values = [(s, v) for s, v, _ in got if s <= last_live]
    twice = sum(n - 1 for n in Counter(values).values() if n > 1)
    missing = len(set(expected) - set(values))
    assert values == expected, (export, missing, twice)
    return {"historized": len(expected), "delivered": len(values), "backfilled": sum(b for *_, b in got),
            "missing": missing, "twice": twice}


def test_a_server_killed_for_60_s_loses_nothing_it_historized(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with asyncua_history_server(tags=TAGS, period=0.1) as server:
        entry = receiver(server.url, plant_tags(), mode="subscribe", poll_interval=0.2, publishing_interval=0.1,
                         sampling_interval=0, connection={"timeout": 2, "watchdog_interval": 1})
        live = Live(entry, tmp_path)
        live.run_for(3)
        server.kill()  # what it historized and had not published yet is in its SQLite file
        killed = time.monotonic()
        live.until(lambda: any(m.category == "opcua" for m in live.markers()), timeout=15)
        live.run_for(60 - (time.monotonic() - killed))
        before = len(live.rows())
        server.start()
        live.until(lambda: any(r["backfill"] for r in live.rows()[before:]), timeout=60)
        live.run_for(3)
        live.close()
        server.stop()
        counts = [check_exact(live, server.history(i), f"tag{i}") for i in range(TAGS)]
    total = {k: sum(c[k] for c in counts) for k in counts[0]}
    print(f"\nserver SIGKILLed for 60 s, {TAGS} tags every 100 ms: {total}")
    assert total["missing"] == 0 and total["twice"] == 0 and total["backfilled"] >= TAGS
    lines = [r.getMessage() for r in caplog.records if r.name == "receiver.opcua"]
    assert sum("connection lost" in line for line in lines) == 1, lines
    assert sum("connected after" in line or "connection back" in line for line in lines) == 1, lines
    assert any("backfilled" in line for line in lines), lines
    assert not [r for r in caplog.records if r.name.startswith("asyncua")]  # no traceback per retry


def test_a_network_cut_loses_nothing_through_transfer_and_republish(tmp_path: Path) -> None:
    with asyncua_history_server(tags=10, period=0.1) as server, TcpProxy(server.port) as proxy:
        entry = receiver(f"opc.tcp://127.0.0.1:{proxy.port}", plant_tags(10), mode="subscribe", poll_interval=0.2,
                         publishing_interval=0.1, sampling_interval=0, queue_size=1000, history_backfill=False,
                         connection={"timeout": 2, "watchdog_interval": 1})
        live = Live(entry, tmp_path)
        live.run_for(2)
        proxy.cut()  # the session and its subscription live on in the server, which queues
        live.until(lambda: any(m.category == "opcua" for m in live.markers()), timeout=15)
        live.run_for(8)
        proxy.heal()
        live.until(lambda: not any(m.category == "opcua" for m in live.markers()), timeout=30)
        live.run_for(3)
        live.close()
        server.stop()
        counts = [check_exact(live, server.history(i), f"tag{i}") for i in range(10)]
    total = {k: sum(c[k] for c in counts) for k in counts[0]}
    print(f"\nnetwork cut for 10 s, 10 tags every 100 ms: {total}")
    assert total["missing"] == 0 and total["twice"] == 0 and total["backfilled"] == 0


def test_a_restart_of_factoryflow_is_backfilled_from_node_opcua_history(tmp_path: Path) -> None:
    tags = [{"name": f"ns=1;s=Plant.Tag{i}", "exportname": f"tag{i}"} for i in range(5)]
    with node_opcua_plant(tags=5, period=0.1, history=True) as plant:
        entry = receiver(plant.url, tags, mode="subscribe", poll_interval=0.2, publishing_interval=0.1,
                         sampling_interval=0)
        first = Live(entry, tmp_path)
        first.run_for(2)
        state = first.snapshot()
        first.close()
        time.sleep(3)  # factoryflow stopped: about 30 changes per tag nobody took
        second = Live(entry, tmp_path, state)
        second.until(lambda: any(not r["backfill"] for r in second.rows()) and len(second.rows()) > 40,
                     timeout=30)
        second.close()
    for i in range(5):
        before, after = delivered(first, f"tag{i}"), delivered(second, f"tag{i}")
        backfilled = [v for _, v, b in after if b]
        live_after = [v for _, v, b in after if not b]
        ticks = [v for _, v, _ in before] + backfilled + live_after
        assert ticks == list(range(int(ticks[0]), int(ticks[0]) + len(ticks))), ticks  # every tick once
        assert len(backfilled) >= 25 and not any(b for *_, b in before)
