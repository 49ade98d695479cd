"""The attachment parser: one record per binary file, its bytes kept content-addressed."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pytest

from dataflows import registry
from dataflows.config import load
from dataflows.records import StreamKey
from dataflows.runtime import RunContext
from dataflows.sdk import ParseError, SourceFile
from tests.connectors.conformance import ParserHarness, parser_harness
from tests.flowrun import drain

#: A real PNG (1x1 pixel) and bytes no text decoder accepts.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a0c5e3e40000000049454e44ae426082")
BINARY = bytes(range(256)) * 40


def parser(**keys: Any) -> Any:
    return msgspec.convert({"parser_name": "images", "parser_type": "attachment", **keys},
                           registry.parsers.union())


def test_one_record_per_file_with_its_bytes_kept(tmp_path: Path) -> None:
    modified = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    file = SourceFile("s3://plant/cam/frame-001.png", len(PNG), modified, tmp_path / "store")
    frame = parser().parse(b"", PNG, source=file.path, first_line=1, file=file)
    digest = hashlib.sha256(PNG).hexdigest()
    assert frame.to_dicts() == [{
        "timestamp": modified, "file_path": "s3://plant/cam/frame-001.png", "file_name": "frame-001.png",
        "file_size": len(PNG), "mime_type": "image/png", "sha256": digest,
        "stored_path": str(tmp_path / "store" / digest[:2] / f"{digest}.png")}]
    assert Path(frame["stored_path"][0]).read_bytes() == PNG
    again = parser().parse(b"", PNG, source="other.png", first_line=1, file=file)
    assert again["stored_path"][0] == frame["stored_path"][0]  # the same bytes are kept once
    assert len(list((tmp_path / "store").rglob("*.png"))) == 1


def test_unknown_types_too_big_files_and_store_false(tmp_path: Path) -> None:
    file = SourceFile("/in/dump.bin7", len(BINARY), datetime.now(UTC), tmp_path / "store")
    frame = parser(store=False).parse(b"", BINARY, source=file.path, first_line=1, file=file)
    assert frame["mime_type"][0] == "application/octet-stream" and frame["stored_path"][0] is None
    assert not (tmp_path / "store").exists()
    with pytest.raises(ParseError, match=r"^/in/dump\.bin7: 10240 bytes, more than max_bytes \(1000\)$"):
        parser(max_bytes=1000).parse(b"", BINARY, source=file.path, first_line=1, file=file)


def test_binary_files_through_the_file_receiver(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "frame.png").write_bytes(PNG)
    (inbox / "blob.bin").write_bytes(BINARY)
    (inbox / "huge.bin").write_bytes(BINARY * 3)
    old = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    for path in inbox.iterdir():
        os.utime(path, (old, old))
    doc = {"transforms": [], "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}],
           "data_receiver": [{"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 1,
                              "connections": [{"data_directory": str(inbox)}],
                              "parsers": [{"parser_name": "images", "parser_type": "attachment",
                                           "max_bytes": 20_000}],
                              "streams": [{"asset": "camera", "stream_type": "frames", "file_filter": ["*"]}]}]}
    rec = load(doc).data_receiver[0]
    ctx = RunContext(home=tmp_path / "home", expected_transmits={("files", StreamKey("camera", "frames")):
                                                                 frozenset({"local"})})
    reader = rec.open_stream(rec.streams[0], None, ctx, rec.open_worker(ctx))
    frame = pl.concat([b.frame for b in drain(reader)])
    assert sorted(frame["file_name"].to_list()) == ["blob.bin", "frame.png"]
    for row in frame.iter_rows(named=True):
        kept = Path(row["stored_path"])
        assert kept.is_relative_to(tmp_path / "home" / "components" / "images")
        assert kept.read_bytes() == (inbox / row["file_name"]).read_bytes()
        assert abs(row["timestamp"].timestamp() - old) < 0.001  # the file's mtime, UTC
    (warning,) = reader.take_bad_input()
    assert "huge.bin: 30720 bytes, more than max_bytes (20000)" in warning


@parser_harness
class AttachmentHarness(ParserHarness):
    """A file of bytes per record set; the records are read back from the kept copy."""

    parser_type = "attachment"

    def parser(self) -> dict[str, Any]:
        return {"parser_name": "conformance", "parser_type": "attachment", "max_bytes": 4096}

    def good(self, seqs: range) -> bytes:
        return json.dumps(list(seqs)).encode()

    def bad(self) -> bytes:
        return BINARY  # 10,240 bytes: over max_bytes

    def seqs(self, frame: Any) -> list[int]:
        assert frame.height == 1  # one record per file
        return list(json.loads(Path(frame["stored_path"][0]).read_bytes()))
