"""Hostile files beside a live stream in the real main job (issue 25, item 6): an xlsx zip
bomb (a 1 GiB shared string in about 1 MB), a CSV of 1,000,000 columns, a 200 MiB JSON
document, a FIFO and a symlink loop. Each gets its marker naming the file (and the cap),
the dataflow's memory stays bounded, the live stream goes on without a gap, and SIGTERM
stops it within 5 s."""

from __future__ import annotations

import io
import os
import signal
import time
import zipfile
from pathlib import Path
from typing import Any

import psutil

from dataflows.ledger import Ledger, ledger_path
from tests.connectors.parsers.test_excel import BOOK
from tests.flowrun import gaps, growing_csv

POLL = 0.5  # seconds
RSS_LIMIT = 1024**3  # bytes: the bomb alone took RSS past 6 GiB before its cap


def zip_bomb(path: Path) -> None:
    """A real workbook whose shared strings inflate to 1 GiB (one string of ``a``)."""
    with zipfile.ZipFile(io.BytesIO(BOOK)) as book, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bomb:
        for item in book.infolist():
            if item.filename != "xl/sharedStrings.xml":
                bomb.writestr(item, book.read(item))
        with bomb.open("xl/sharedStrings.xml", "w", force_zip64=True) as strings:
            strings.write(b'<?xml version="1.0"?><sst xmlns="http://schemas.openxmlformats.org/'
                          b'spreadsheetml/2006/main" count="1" uniqueCount="1"><si><t>')
            block = b"a" * (1024 * 1024)
            for _ in range(1024):
                strings.write(block)
            strings.write(b"</t></si></sst>")


def hostile(directory: Path) -> None:
    directory.mkdir()
    zip_bomb(directory / "bomb.xlsx")
    (directory / "wide.csv").write_bytes(",".join(f"c{n}" for n in range(1_000_000)).encode() + b"\n"
                                         + b",".join([b"1"] * 1_000_000) + b"\n")
    with (directory / "dump.json").open("wb") as out:  # sparse: costs no disk
        out.truncate(200 * 1024 * 1024)
    os.mkfifo(directory / "pipe.csv")
    (directory / "loop1.csv").symlink_to(directory / "loop2.csv")
    (directory / "loop2.csv").symlink_to(directory / "loop1.csv")
    for path in directory.iterdir():
        if path.is_file():
            os.utime(path, (1, 1))


def test_hostile_files_are_refused_and_the_live_stream_goes_on(tmp_path: Path, flows: Any) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    live = inbox / "line.csv"
    hostile(inbox / "hostile")
    streams = [("line", "csv", ["line.csv"]), ("hostile", "excel", ["hostile/*.xlsx"]),
               ("hostile", "csv", ["hostile/*.csv"]), ("hostile", "json", ["hostile/*.json"])]
    config = {"data_receiver": [{
        "data_receiver_name": "files", "protocol": "localfile", "poll_interval": POLL,
        "connections": [{"data_directory": str(inbox)}],
        "parsers": [{"parser_name": "csv", "parser_type": "csv", "filter_stream": ["*:csv"]},
                    {"parser_name": "excel", "parser_type": "excel", "filter_stream": ["*:excel"]},
                    {"parser_name": "json", "parser_type": "json", "filter_stream": ["*:json"]}],
        "streams": [{"asset": asset, "stream_type": kind, "path_filter": paths} for asset, kind, paths in streams]}],
        "transforms": [], "data_transmit": [{"transmit_name": "out", "transmit_type": "localfile"}]}
    flow = flows(tmp_path / "home", config)
    with growing_csv(live):
        flow.start()
        assert flow.proc is not None
        process = psutil.Process(flow.proc.pid)
        ledger = Ledger(ledger_path(flow.home))
        counts: list[tuple[float, int]] = []
        peak = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            counts.append((time.monotonic(), ledger.progress("out", "line:csv")[0]))
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)
        markers = {(m.stream_type, m.category): m.message for m in ledger.markers()}
        stopping = time.monotonic()
        assert flow.stop(signal.SIGTERM, timeout=30) == 0
        stopped = time.monotonic() - stopping
    live_counts = [c for _, c in counts if c]
    longest = max(gaps(counts))
    print(f"\nhostile files: peak RSS {peak / 2**20:.0f} MiB (limit {RSS_LIMIT / 2**20:.0f} MiB), live rows "
          f"{live_counts[0]} -> {live_counts[-1]}, longest gap {longest:.2f} s (limit {2 * POLL} s), "
          f"stopped {stopped:.1f} s after SIGTERM (limit 5 s); markers:\n" +
          "\n".join(f"  {k}: {v}" for k, v in sorted(markers.items())))
    hostile_dir = inbox / "hostile"
    assert "bomb.xlsx: the workbook inflates to 1,07" in markers[("excel", "input")]
    assert "over max_inflated_bytes" in markers[("excel", "input")]
    assert "wide.csv" in markers[("csv", "input")] and "max_columns" in markers[("csv", "input")]
    assert f"{hostile_dir / 'dump.json'}: 209715200 bytes, more than max_document_bytes" in markers[("json", "input")]
    assert "skipped" in markers[("csv", "input warning")]  # the FIFO and the loop: warnings
    assert peak < RSS_LIMIT
    assert longest <= 2 * POLL
    assert stopped < 5
