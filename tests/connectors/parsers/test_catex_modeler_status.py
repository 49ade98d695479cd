"""The catex_modeler_status parser: the document's status capture, exact fields, bad input."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pytest

from connectors.transmits.authentise_capture import render_capture
from dataflows import registry
from dataflows.sdk import ParseError, SourceFile
from tests.connectors.conformance import ParserHarness, parser_harness

CAPTURE = Path(__file__).resolve().parents[2] / "fixtures" / "authentise" / "modeler_status_1.log"


def parser() -> Any:
    return msgspec.convert({"parser_name": "status", "parser_type": "catex_modeler_status"},
                           registry.parsers.union())


def test_the_documents_capture_parses_into_exact_fields() -> None:
    frame = parser().parse(b"", CAPTURE.read_bytes(), source="modeler_status_1.log", first_line=1)
    assert frame.height == 1
    record = frame.row(0, named=True)
    # 20 general options, one cassette of 8, 29 of currentJob, an empty queue, 29 of previousJob
    assert len(record) == 1 + 20 + 8 + 29 + 29
    assert record["timestamp"] == datetime(2016, 3, 14, 14, 12, 54, tzinfo=UTC)  # serverTime 1457964774
    assert {k: v for k, v in record.items() if k.startswith("general.")} == {
        "general.modelerStatus": "Building", "general.modelerExplanation": ": ",
        "general.startTime": "1457952053", "general.elapsedBuildTime": 12721, "general.modCount": 143,
        "general.modelerType": "vt2l", "general.currentModelingLayer": 34, "general.partCurrentTemp": 355,
        "general.supportCurrentTemp": 241, "general.envelopeCurrentTemp": 100, "general.partTip": "T12",
        "general.supportTip": "T12SR100", "general.partSetTemp": 355, "general.supportSetTemp": 240,
        "general.envelopeSetTemp": 100, "general.serverTime": 1457964774,
        "general.serverTimeZoneOffset": 21600, "general.serverTimeDSTValue": 1,
        "general.controllerVersion": " 3.17.2516.0 ", "general.compatibleCMBVersion": 9.3}
    assert {k: v for k, v in record.items() if k.startswith("cassette.")} == {
        "cassette.0.spool": 0, "cassette.0.name": "NYL12", "cassette.0.status": "ACTIVE",
        "cassette.0.remainingMatl": 25.209132, "cassette.0.mfgDate": "05122015", "cassette.0.mfgLot": "6621",
        "cassette.0.initialMatl": 92.3, "cassette.0.serialNumber": 278929307}
    assert record["currentJob.jobName"] == "my-job" and record["currentJob.jobid"] == 123
    assert record["currentJob.owner"] == "Eli Ribble"
    assert record["currentJob.partTotalMatl"] == 3.162662
    assert record["currentJob.buildMode"] == ""
    assert record["currentJob.pack"] == "{ sacTower,1140 CLIP, CAMERA FLEX ARM FLEX CLIP BODY*51 }"
    assert record["currentJob.comment"] == "Packed file written by Control Center!!!!!Model color: black.  "
    assert record["previousJob.position"] == "-1" and record["previousJob.jobName"] == ""
    assert record["previousJob.partTip"] == "T16" and record["previousJob.jobId"] == 0
    assert not any(k.startswith("queue") for k in record)
    assert frame.schema["general.compatibleCMBVersion"] == pl.Float64
    assert frame.schema["currentJob.jobid"] == pl.Int64
    assert frame.schema["general.startTime"] == pl.String


def test_without_server_time_the_files_time_is_the_timestamp(tmp_path: Path) -> None:
    body = b'set machineStatus(general) {\n  -modelerStatus "Idle"\n};\n'
    modified = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    frame = parser().parse(b"", body, source="s.log", first_line=1,
                           file=SourceFile("s.log", len(body), modified, tmp_path))
    assert frame.to_dicts() == [{"timestamp": modified, "general.modelerStatus": "Idle"}]


def test_groups_escapes_and_text_columns() -> None:
    body = (b'set machineStatus(queue) {\n  {\n  -jobName "a \\"quoted\\" job" -position 1\n  }\n'
            b'  { -jobName {nested {braces} kept} -position 2 }\n};')
    frame = parser().parse(b"", body, source="q.log", first_line=1, text_columns=["queue.1.position"])
    assert frame.to_dicts() == [{"queue.0.jobName": 'a "quoted" job', "queue.0.position": 1,
                                 "queue.1.jobName": "nested {braces} kept", "queue.1.position": "2"}]


@pytest.mark.parametrize(("body", "message"), [
    (b'set machineStatus(general) {\n  -a 1\n  -b "open\n};', "s.log, line 3: column 6: this quoted string is never closed"),
    (b'set machineStatus(general) {\n  -a 1\n', "s.log, line 1: column 28: this brace is never closed"),
    (b'set machineStatus(general) {\n  -a 1\n  b 2\n};', "s.log, line 3: column 3: expected an option (-key value) or '}', found 'b'"),
    (b'set machineStatus(general) {\n  -a\n};', "s.log, line 3: column 1: option -a has no value"),
    (b'put machineStatus(general) {};', "s.log, line 1: column 1: expected 'set machineStatus(<section>) {', found 'put machineS'"),
    (b'set machineStatus(gen eral) {};', "s.log, line 1: column 19: expected a section name and ')' after 'machineStatus('"),
    (b'', "s.log: no 'set machineStatus(<section>) { ... }' statement"),
])
def test_bad_input_names_line_and_column(body: bytes, message: str) -> None:
    with pytest.raises(ParseError) as raised:
        parser().parse(b"", body, source="s.log", first_line=1)
    assert str(raised.value) == message


def test_a_key_given_twice_keeps_the_last_and_warns() -> None:
    warnings: list[str] = []
    frame = parser().parse(b"", b"set machineStatus(general) {\n -a 1\n -a 2\n};", source="s.log",
                           first_line=1, warn=warnings.append)
    assert frame["general.a"].to_list() == [2]
    assert warnings == ["s.log, line 3: -a given twice in general: the last value is kept"]


def test_a_rendered_capture_parses_back_into_the_same_fields() -> None:
    frame = parser().parse(b"", CAPTURE.read_bytes(), source="m.log", first_line=1)
    record = frame.row(0, named=True)
    again = parser().parse(b"", render_capture(record).encode(), source="r.log", first_line=1)
    assert again.row(0, named=True) == record


@parser_harness
class CatexHarness(ParserHarness):
    """A status capture with one cassette per ``seq``; bad input is a section left open."""

    parser_type = "catex_modeler_status"

    def good(self, seqs: range) -> bytes:
        cassettes = "".join(f"    {{\n    -spool {s}\n    -name \"NYL12\"\n    }}\n" for s in seqs)
        return f'set machineStatus(general) {{\n    -modelerStatus "Building"\n}};\n' \
               f"set machineStatus(cassette) {{\n{cassettes}}};\n".encode()

    def bad(self) -> bytes:
        return b'set machineStatus(general) {\n    -modelerStatus "Building"\n'

    def seqs(self, frame: Any) -> list[int]:
        record = frame.row(0, named=True)
        return [record[f"cassette.{i}.spool"] for i in range(len(record)) if f"cassette.{i}.spool" in record]
