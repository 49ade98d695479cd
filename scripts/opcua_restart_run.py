"""A long run of the opcua receiver against node-opcua's sample server, with a restart of
the server in the middle, through the control API (``python -m api``).

Two receivers read the sample server: ``poll_1s`` (mode poll, every second) and
``subscribe_1s`` (mode subscribe, publishing every second, sampling every 0.5 s), into
the ``localfile`` transmit. After ``--minutes / 2`` the server stops for ``--outage``
seconds and starts again on the same port. The script prints the records delivered per
minute for each stream, and ``GET /v1/streams`` during the outage and after it.

    .venv/bin/python scripts/opcua_restart_run.py --minutes 10 --outage 60

Needs what ``scripts/setup.sh --test --services`` installs (node-opcua from npm).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.services.opcua import NodeOpcuaServer
from tests.walkthrough import ApiProcess

TAGS = [{"name": "ns=1;s=FanSpeed", "exportname": "fan_speed"},
        {"name": "ns=1;s=Pressure", "exportname": "pressure"},
        {"name": "ns=1;s=PumpSpeed", "exportname": "pump_speed"}]


def config(url: str) -> dict[str, Any]:
    """Both receivers on the sample server, into the localfile transmit ``out``."""
    def receiver(name: str, **keys: Any) -> dict[str, Any]:
        return {"data_receiver_name": name, "protocol": "opcua", "poll_interval": 1,
                "connections": [{"endpoint": url, "timeout": 3}], **keys,
                "streams": [{"asset": "sample_server", "stream_type": name, "opcua_tags": TAGS}]}

    return {"data_receiver": [receiver("poll_1s", mode="poll"),
                              receiver("subscribe_1s", mode="subscribe", publishing_interval=1,
                                       sampling_interval=0.5)],
            "transforms": [], "data_transmit": [{"transmit_name": "out", "transmit_type": "localfile"}]}


def delivered(home: Path) -> dict[str, int]:
    """Records in the localfile transmit's files, per stream type."""
    out = home / "components" / "out"
    return {name: sum(1 for _ in (out / f"sample_server__{name}.jsonl").open())
            if (out / f"sample_server__{name}.jsonl").exists() else 0 for name in ("poll_1s", "subscribe_1s")}


def streams(api: ApiProcess) -> list[dict[str, Any]]:
    """``GET /v1/streams``, the keys that tell the story."""
    keep = ("data_receiver", "stream", "records_received", "records_delivered", "last_timestamp", "state",
            "records_per_minute")
    return [{**{k: s[k] for k in keep},
             "markers": [f"{m['level']} {m['category']}: {m['message']}" for m in s["markers"]]}
            for s in api.call("GET", "/v1/streams")["response"]]


def report(counts: list[dict[str, int]], now: dict[str, int], stop_at: float, outage: float) -> None:
    """Print the records delivered in the minute that just ended, and the server's state in it."""
    before = counts[-1]
    counts.append(now)
    start, end = 60 * (len(counts) - 2), 60 * (len(counts) - 1)
    down = max(0.0, min(end, stop_at + outage) - max(start, stop_at))
    state = "up" if down == 0 else f"down {down:.0f} s"
    print(f"{len(counts) - 1:>6} {now['poll_1s'] - before['poll_1s']:>8} "
          f"{now['subscribe_1s'] - before['subscribe_1s']:>12}  {state}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the server is down")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="factoryflow-opcua-run-"))
    (root / "server").mkdir()
    server = NodeOpcuaServer(root / "server").start()
    api = ApiProcess(root / "home")
    try:
        api.call("POST", "/v1/config", json=config(server.url))
        print("POST /v1/ftx/start", api.call("POST", "/v1/ftx/start"), flush=True)
        start = time.monotonic()
        minute_counts = [delivered(api.home)]
        stop_at = args.minutes * 60 / 2
        stopped = restarted = shown = False
        print(f"{'minute':>6} {'poll_1s':>8} {'subscribe_1s':>12}  server", flush=True)
        while (elapsed := time.monotonic() - start) < args.minutes * 60:
            if not stopped and elapsed >= stop_at:
                server.stop()
                stopped = True
                print(f"-- {elapsed:.0f} s: server stopped for {args.outage:.0f} s", flush=True)
            if stopped and not shown and elapsed >= stop_at + args.outage / 2:
                print("GET /v1/streams during the outage:", json.dumps(streams(api), indent=1), flush=True)
                shown = True
            if stopped and not restarted and elapsed >= stop_at + args.outage:
                server.start()
                restarted = True
                print(f"-- {elapsed:.0f} s: server started again", flush=True)
            if elapsed >= 60 * len(minute_counts):
                report(minute_counts, delivered(api.home), stop_at, args.outage)
            time.sleep(0.5)
        report(minute_counts, delivered(api.home), stop_at, args.outage)
        print("GET /v1/streams after the restart:", json.dumps(streams(api), indent=1), flush=True)
        print("POST /v1/ftx/stop", api.call("POST", "/v1/ftx/stop"), flush=True)
    finally:
        print("python -m api exit status", api.stop())
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
