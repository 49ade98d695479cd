"""The ``localfile`` transmit, the embedded default: JSON lines on local disk.

Appends each record to ``$FACTORYFLOW_HOME/components/<transmit_name>/<asset>__<stream_type>.jsonl``
as one JSON object: ``asset``, ``stream_type``, then the record's fields; timestamps are
ISO-8601 UTC ending in ``Z`` (naive timestamps, i.e. not converted by
``convert_timestamps``, are taken as UTC). ``write_batch`` returns only after
``fsync``, so no receiver state is snapshotted ahead of the data on disk.

Delivery is exactly once, across crashes too: the transmit is recoverable
(:class:`~dataflows.sdk.RecoverableWriter`). Its snapshot, taken by bytewax with the
receivers' state at each epoch, holds each file's size; when the dataflow resumes after a
crash (SIGKILL, power loss), it cuts each file back to that size, since the receivers read
the records written after it again, and takes them off the delivered counts. Before the
first snapshot of a recovery store, the sizes the files had when its first run began
(:data:`BASELINE`) play that part, so a crash in the first epoch replays nothing twice
either. The transmit writes on one worker (a file has one writer).

Each write logs a progress line per stream: records in the batch, records delivered in
all, last ``timestamp``; the totals live in the delivery ledger.

The worked example is ``LocalFileTransmit.example``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import IO, Any, ClassVar

from dataflows.sdk import (
    Batch,
    RunContext,
    TransmitConfig,
    TransmitReport,
    Written,
    records_frame,
    transmits,
    wait_for_space,
)


def file_name(batch: Batch) -> str:
    """``<asset>__<stream_type>.jsonl`` with characters unsafe in file names replaced by ``_``."""
    safe = re.compile(r"[^\w.\- ]")
    return f"{safe.sub('_', batch.stream.asset)}__{safe.sub('_', batch.stream.stream_type)}.jsonl"


#: The file beside the output holding each file's size when a recovery store's first run
#: began (``{"generation": ..., "sizes": {...}}``): a crash before that run's first
#: snapshot cuts the files back to it.
BASELINE = ".baseline.json"


class _LocalFileWriter:
    def __init__(self, config: LocalFileTransmit, ctx: RunContext, report: TransmitReport) -> None:
        self._ctx = ctx
        self._dir = ctx.component_dir(config.transmit_name)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, IO[bytes]] = {}
        self._sizes: dict[str, int] = {}
        self._report = report
        self._log = logging.getLogger(f"transmit.{config.transmit_name}")

    def snapshot(self) -> dict[str, int]:
        """The size in bytes of each file written, as of the last write."""
        return dict(self._sizes)

    def resume(self, state: dict[str, int] | None) -> None:
        """Cut each file back to its size in ``state``: the records after it are read again.

        ``None`` is a first run of the recovery store (or of this transmit in it): the sizes
        now are kept beside the output (:data:`BASELINE`) before anything is written, so a
        crash before the first snapshot, whose records are all read again, cuts the files
        back to them. Without recovery the files are only appended to.
        """
        if state is None:
            state = self._baseline()
            if state is None:
                return
        self._sizes = dict(state)
        for path in sorted(self._dir.glob("*.jsonl")):
            keep = state.get(path.name, 0)
            if path.stat().st_size <= keep:
                continue
            with open(path, "r+b") as handle:
                handle.seek(keep)
                lines = [line for line in handle.read().split(b"\n") if line.strip()]
                handle.truncate(keep)
                os.fsync(handle.fileno())
            if lines:
                first = json.loads(lines[0]) if lines[0].endswith(b"}") else {}
                stream = f"{first.get('asset')}:{first.get('stream_type')}"
                self._report.take_back(stream, len(lines))
                self._log.info("%s: resuming after a crash: %d records written after the last snapshot "
                               "taken back from %s; they are read and written again", stream, len(lines),
                               path.name)

    def _baseline(self) -> dict[str, int] | None:
        """The sizes the files had when this recovery store's first run began, if that run
        crashed before its first snapshot; None otherwise, after keeping the sizes now."""
        sizes = {path.name: path.stat().st_size for path in self._dir.glob("*.jsonl")}
        generation = self._ctx.recovery_generation()
        if generation is None:  # no state kept: a restart reads everything again anyway
            self._sizes = sizes
            return None
        path = self._dir / BASELINE
        try:
            kept = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            kept = None
        if isinstance(kept, dict) and kept.get("generation") == generation:
            self._log.info("no snapshot since this recovery store's first run began: the output is "
                           "cut back to where that run found it")
            return dict(kept.get("sizes", {}))
        temporary = path.with_name(BASELINE + ".tmp")
        with open(temporary, "wb") as out:
            out.write(json.dumps({"generation": generation, "sizes": sizes}).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        _fsync_dir(self._dir)
        self._sizes = sizes
        return None

    def _file(self, name: str) -> IO[bytes]:
        if name not in self._files:
            path = self._dir / name
            created = not path.exists()
            self._files[name] = open(path, "ab")  # noqa: SIM115 - kept open across batches
            if created:
                _fsync_dir(self._dir)
        return self._files[name]

    def write(self, batches: list[Batch]) -> Written:
        """Append and fsync; on a full disk, cut the files back to where they were, wait for
        space and write again (:func:`~dataflows.sdk.wait_for_space`)."""
        def append() -> None:
            for batch in batches:
                if batch.frame.height:
                    records_frame(batch).write_ndjson(self._file(file_name(batch)))
            for name, handle in self._files.items():
                handle.flush()
                os.fsync(handle.fileno())
                self._sizes[name] = handle.tell()

        before = dict(self._sizes)  # the sizes on disk before this write

        def undo() -> None:  # what a failed write left half, in every file: it is written again whole
            for name, handle in list(self._files.items()):
                with contextlib.suppress(OSError):  # its buffer cannot be flushed either
                    handle.close()
                del self._files[name]
                path = self._dir / name
                if path.exists() and path.stat().st_size > before.get(name, 0):
                    os.truncate(path, before.get(name, 0))
            self._sizes = dict(before)

        wait_for_space(append, self._dir, self._ctx.shutdown, self._log, undo=undo)
        return "delivered"  # on disk

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@transmits.register
class LocalFileTransmit(TransmitConfig, tag="localfile", kw_only=True):
    """Appends records as JSON lines under ``$FACTORYFLOW_HOME/components/<transmit_name>/``."""

    title: ClassVar[str] = "Local File"
    example: ClassVar[dict[str, Any]] = {"transmit_name": "local", "transmit_type": "localfile"}

    recoverable: ClassVar[bool] = True

    def open_writer(self, ctx: RunContext, report: TransmitReport) -> _LocalFileWriter:
        return _LocalFileWriter(self, ctx, report)
