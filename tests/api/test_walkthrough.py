"""``python -m api`` as a real process: the quickstart into Kafka, then a restream of lasercut:mssql."""

from __future__ import annotations

from pathlib import Path

from tests.services.kafka import KafkaBroker
from tests.walkthrough import LASERCUT_MACHINES, walkthrough


def test_quickstart_through_the_api_into_kafka_and_restream(kafka: KafkaBroker, tmp_path: Path) -> None:
    shown: dict[str, object] = {}
    result = walkthrough(kafka, tmp_path / "home", show=shown.__setitem__, ticks=4)
    assert result["exit"] == 0  # a clean exit on SIGTERM
    assert len(result["before"]) == 4 * LASERCUT_MACHINES and set(result["before"].values()) == {1}
    assert result["restream"] == {"success": True, "response": "Restream has completed successfully"}
    assert set(result["after"]) == set(result["before"]) and set(result["after"].values()) == {2}
    assert shown["fresh instance: GET /v1/streams"] == {"success": True, "response": []}
    streams = shown["running: GET /v1/streams"]["response"]  # type: ignore[index]
    assert [s["stream"] for s in streams] == ["lasercut:mssql", "diecast:mssql", "fusion:mssql",
                                              "spraypaint:azure_lake"]
    status = shown["after the restream: GET /v1/status"]["response"]  # type: ignore[index]
    assert status["factorytx"]["status"] == "running"
    assert status["last_data_transmit"]["MyTransmit_1"]["records_delivered"] >= 2 * 4 * LASERCUT_MACHINES
    assert shown["POST /v1/ftx/stop"] == {"success": True, "response": "stopped"}
    web = (tmp_path / "home" / "log" / "factorytx_web.log").read_text()
    assert "restream request 1 applied by every stream" in web
    assert "control API on http://127.0.0.1:" in web
    assert "dataflow stopped (exit status 0)" in web  # SIGTERM to the API: the dataflow stopped gracefully
