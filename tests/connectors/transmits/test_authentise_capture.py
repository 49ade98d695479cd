"""The authentise_capture transmit against the Authentise simulator (``tests/simulators/authentise.py``)."""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from connectors.parsers.catex_modeler_status import parse_capture
from connectors.transmits.authentise_capture import AuthentiseCapture, CaptureSender
from dataflows.config import load
from dataflows.ledger import Ledger, ledger_path
from dataflows.outbox import Outbox
from dataflows.records import Batch, StreamKey
from dataflows.report import TransmitReport
from tests.connectors.conformance import TransmitHarness, transmit_harness
from tests.simulators.authentise import AuthentiseSimulator

CAPTURE = (Path(__file__).resolve().parents[2] / "fixtures" / "authentise" / "modeler_status_1.log").read_bytes()
STREAM = StreamKey("fortus_1", "status")


@pytest.fixture
def authentise() -> Iterator[AuthentiseSimulator]:
    with AuthentiseSimulator() as simulator:
        yield simulator


def transmit(entry: dict[str, Any]) -> AuthentiseCapture:
    return load({"data_receiver": [], "transforms": [], "data_transmit": [entry]}, runnable=False,
                environ={}).data_transmit[0]


def captures(n: int) -> dict[str, bytes]:
    """``n`` status captures: the document's, each with its own job name and server time."""
    return {f"status_{i:03d}.log": CAPTURE.replace(b'"my-job"', f'"job-{i:03d}"'.encode())
            .replace(b"1457964774", str(1457964774 + 300 * i).encode()) for i in range(n)}


def captures_config(sim: AuthentiseSimulator, modeler: str, directory: Path, **overrides: Any) -> dict[str, Any]:
    """Status logs in ``directory`` read whole (``attachment``) and uploaded as they are."""
    return {"data_receiver": [{
        "data_receiver_name": "printer_logs", "protocol": "localfile", "poll_interval": 1,
        "connections": [{"data_directory": str(directory)}],
        "parsers": [{"parser_name": "capture_files", "parser_type": "attachment"}],
        "streams": [{"asset": "fortus_1", "stream_type": "status", "file_filter": ["*.log"],
                     "parser": "capture_files"}]}],
        "transforms": [], "data_transmit": [sim.transmit(modeler, **overrides)]}


def sender(tmp_path: Path, config: AuthentiseCapture, sleeps: list[float] | None = None) -> CaptureSender:
    report = TransmitReport(Ledger(ledger_path(tmp_path)), config.transmit_name, config.record_noun)
    out = CaptureSender(config, Outbox(tmp_path / "outbox.sqlite"), report)
    if sleeps is not None:
        out._sleep = sleeps.append
    return out


def fill(s: CaptureSender, config: AuthentiseCapture, bodies: list[bytes], tmp_path: Path) -> None:
    paths = []
    for i, body in enumerate(bodies):
        path = tmp_path / f"c{i}.log"
        path.write_bytes(body)
        paths.append(str(path))
    frame = pl.DataFrame({"timestamp": [datetime(2026, 1, 1, tzinfo=UTC)] * len(paths), "stored_path": paths})
    s.outbox.append([(str(STREAM), ts, body) for ts, body in config.captures(Batch("r", STREAM, frame, "q"))])


def test_a_directory_of_captures_is_uploaded_as_the_files_are(authentise: AuthentiseSimulator, tmp_path: Path,
                                                              flows: Any) -> None:
    modeler = authentise.add_modeler()
    directory = tmp_path / "logs"
    directory.mkdir()
    files = captures(12)
    for name, body in files.items():
        (directory / name).write_bytes(body)
    authentise.fail_uploads = 3  # answered 500, retried to the same upload location
    flow = flows(tmp_path / "home", captures_config(authentise, modeler, directory))
    flow.start()
    flow.wait_for(lambda: len(authentise.uploads) >= len(files), what="every capture uploaded")
    assert flow.stop() == 0
    assert sorted(u.content for u in authentise.uploads) == sorted(files.values())  # each once, as written
    assert all(gzip.decompress(u.compressed) == u.content for u in authentise.uploads)
    status_type = authentise.capture_type_uri("catex.modeler.status")  # the name, resolved for a Fortus 250
    assert {(u.modeler, u.capture_type) for u in authentise.uploads} == {(modeler, status_type)}
    assert len(authentise.captures) == len(files)  # no capture created twice for a retried upload
    assert authentise.logins == 1
    assert sorted(b["name"] for b in authentise._builds()) == [f"job-{i:03d}" for i in range(12)]
    log = flow.log()
    assert "logged in to" in log and "HTTP 500 internal: Upload failed; retry 1" in log
    assert "fortus_1:status: +1 captures" in log


def test_a_sigkill_mid_upload_loses_no_capture(authentise: AuthentiseSimulator, tmp_path: Path, flows: Any) -> None:
    modeler = authentise.add_modeler()
    directory = tmp_path / "logs"
    directory.mkdir()
    files = captures(40)
    for name, body in files.items():
        (directory / name).write_bytes(body)
    authentise.switches.slow_seconds = 0.1
    flow = flows(tmp_path / "home", captures_config(authentise, modeler, directory))
    flow.start()
    flow.wait_for(lambda: len(authentise.uploads) >= 10, what="10 uploads")
    flow.kill()
    at_kill = len(authentise.uploads)
    flow.start()
    flow.wait_for(lambda: {u.content for u in authentise.uploads} == set(files.values()),
                  what="every capture after the restart")
    assert flow.stop() == 0
    counts = Counter(u.content for u in authentise.uploads)
    assert set(counts) == set(files.values())  # none lost
    again = sum(c - 1 for c in counts.values())
    assert again <= 1  # at most the upload in flight at the kill, if its delete did not happen
    print(f"authentise: {len(files)} captures; SIGKILL after {at_kill} uploads; after the restart "
          f"{len(authentise.uploads)} uploads, {len(counts)} distinct ({again} uploaded again); "
          f"{len(authentise.captures) - len(authentise.uploads)} captures created and left empty")


def test_refused_credentials_pause_the_transmit(authentise: AuthentiseSimulator, tmp_path: Path) -> None:
    config = transmit(authentise.transmit(authentise.add_modeler(), password="wrong"))
    s = sender(tmp_path, config)
    fill(s, config, [CAPTURE], tmp_path)
    assert s.send_once()
    assert s.paused and s.report.paused_fingerprint() == config.fingerprint()
    status = Ledger(ledger_path(tmp_path)).transmit_status("authentise")
    assert "HTTP 401 (unauthorized: Invalid username or password)" in status.last_error
    assert s.outbox.depth()[0] == 1  # kept
    s.close()
    s = sender(tmp_path, config)
    s.resume_or_stay_paused()
    assert s.paused  # across a restart, until the settings change
    s.close()


def test_an_expired_session_logs_in_again(authentise: AuthentiseSimulator, tmp_path: Path) -> None:
    config = transmit(authentise.transmit(authentise.add_modeler()))
    sleeps: list[float] = []
    s = sender(tmp_path, config, sleeps)
    fill(s, config, [CAPTURE, CAPTURE.replace(b"my-job", b"job-2")], tmp_path)
    assert s.send_once()
    authentise.expire_sessions()
    assert s.send_once()
    assert authentise.logins == 2 and len(sleeps) == 1  # one retry: the 401, then a new session
    assert [u.content for u in authentise.uploads] == [CAPTURE, CAPTURE.replace(b"my-job", b"job-2")]
    s.close()


def test_an_outage_is_retried_with_backoff(authentise: AuthentiseSimulator, tmp_path: Path) -> None:
    config = transmit(authentise.transmit(authentise.add_modeler()))
    sleeps: list[float] = []
    s = sender(tmp_path, config, sleeps)
    fill(s, config, [CAPTURE], tmp_path)
    authentise.switches.outage = True

    def heal(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            authentise.switches.outage = False

    s._sleep = heal
    assert s.send_once()
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2]  # 1 s doubling, with jitter
    assert [u.content for u in authentise.uploads] == [CAPTURE] and s.outbox.depth()[0] == 0
    s.close()


def test_a_dead_upload_location_gets_a_new_capture(authentise: AuthentiseSimulator, tmp_path: Path) -> None:
    config = transmit(authentise.transmit(authentise.add_modeler()))
    s = sender(tmp_path, config, [])
    fill(s, config, [CAPTURE], tmp_path)
    original = authentise._upload
    expired_ids: list[str] = []

    def expired(ident: str, request: Any, body: bytes) -> Any:
        if not expired_ids:  # the first capture's upload location has expired: 404
            expired_ids.append(ident)
            authentise.captures.pop(ident)
        return original(ident, request, body)

    authentise._upload = expired  # type: ignore[method-assign]
    assert s.send_once()
    assert len(authentise.uploads) == 1 and authentise.uploads[0].content == CAPTURE
    assert authentise.uploads[0].capture != authentise.uri("capture", expired_ids[0])  # a new capture
    s.close()


def test_records_without_a_file_are_written_as_status_captures(authentise: AuthentiseSimulator,
                                                               tmp_path: Path) -> None:
    config = transmit(authentise.transmit(authentise.add_modeler(), capture_type=authentise.capture_type_uri()))
    frame = pl.DataFrame({"timestamp": [datetime(2026, 1, 1, tzinfo=UTC)], "general.modelerStatus": ["Idle"],
                          "cassette.0.name": ["NYL12"], "cassette.1.name": ["SR-110"], "note": [None]})
    s = sender(tmp_path, config)
    s.outbox.append([(str(STREAM), ts, body) for ts, body in config.captures(Batch("r", STREAM, frame, "q"))])
    assert s.send_once()
    assert parse_capture(authentise.uploads[0].content.decode(), "u") == {
        "general.timestamp": "2026-01-01T00:00:00+00:00", "general.modelerStatus": "Idle",
        "cassette.0.name": "NYL12", "cassette.1.name": "SR-110"}
    s.close()


def test_a_missing_capture_file_is_reported_not_uploaded(tmp_path: Path) -> None:
    config = transmit({"transmit_name": "authentise", "transmit_type": "authentise_capture", "username": "u",
                       "password": "p", "modeler": "https://data.example/modeler/1/"})
    frame = pl.DataFrame({"stored_path": [str(tmp_path / "gone.log")]})
    assert config.captures(Batch("r", STREAM, frame, "q")) == []


@transmit_harness
class AuthentiseHarness(TransmitHarness):
    """The Authentise simulator, and the outbox for what is not uploaded yet; records are
    written as status captures (no capture file)."""

    transmit_type = "authentise_capture"

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.simulator = AuthentiseSimulator().start()

    def transmit(self, home: Path) -> dict[str, Any]:
        return {**self.simulator.transmit(self.simulator.add_modeler()), "transmit_name": "conformance"}

    def durable_seqs(self, home: Path, expected: int) -> list[int]:
        outbox = Outbox(home / "components" / "conformance" / "outbox.sqlite")
        try:  # the outbox first: a capture uploaded meanwhile is then on the simulator, never missed
            stored = [gzip.decompress(e.body) for e in outbox.peek(1_000_000, 1 << 40)]
        finally:
            outbox.close()
        bodies = [u.content for u in self.simulator.uploads] + stored
        return [parse_capture(body.decode(), "capture")["general.seq"] for body in bodies]

    def close(self) -> None:
        self.simulator.stop()
