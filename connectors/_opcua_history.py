"""Backfill from an OPC UA server's history: the values a subscription missed, read with
the HistoryRead service (OPC UA Part 11, ReadRawModifiedDetails; Part 4 §5.10.3) and
handed on in source-time order across a stream's tags.

Used by :mod:`connectors._opcua` after a gap the session could not bridge (a server
restart, a subscription created again, factoryflow started from its state); see
``docs/opcua.md`` ("Backfill from history").
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from connectors._opcua_errors import explain
from connectors._opcua_feed import MAX_BUFFERED_CHANGES, source_of

if TYPE_CHECKING:
    from connectors._opcua import Session
    from connectors._opcua_feed import Feed

__all__ = ["BACKFILL_ATTEMPTS", "NODES_PER_CALL", "PAGE", "HistoryNode", "backfill", "read_raw", "start_backfill"]

_log = logging.getLogger("receiver.opcua")

#: Values asked per node and HistoryRead call (the server may return fewer, with a
#: continuation point for the rest).
PAGE = 1000
#: Nodes per HistoryRead call.
NODES_PER_CALL = 100
#: Tries of one backfill (the connection may drop meanwhile), 1 s doubling up to 5 s.
BACKFILL_ATTEMPTS = 5


@dataclass
class HistoryNode:
    """One node to backfill: values with a source timestamp after ``since`` (UTC).

    :ivar key: what the values are handed on under (the tag's export name).
    :ivar problem: after :func:`read_raw`: the status code that ended its reading early
        (``BadHistoryOperationUnsupported: ...``), else None.
    :ivar count: after :func:`read_raw`: values handed on.
    """

    key: Hashable
    node_id: Any  # ua.NodeId
    since: datetime
    problem: str | None = None
    count: int = 0
    newest: datetime | None = None  # the newest source timestamp handed on
    _buffer: list[Any] = field(default_factory=list)  # DataValues read, not yet handed on
    _continuation: bytes | None = None
    _done: bool = False


async def read_raw(client: Any, nodes: list[HistoryNode],
                   emit: Callable[[list[tuple[Hashable, Any]]], Awaitable[None]],
                   timeout: float, until: datetime | None = None) -> None:
    """Read every value of ``nodes`` newer than each one's ``since`` up to ``until``
    (default: an hour from now, i.e. everything the server has) and pass them to ``emit``
    as ``(key, DataValue)`` lists, oldest first across all nodes.

    Each call asks :data:`NODES_PER_CALL` nodes for :data:`PAGE` values each and follows
    the continuation points; values are handed on once no node still being read can
    hold an older one, so memory holds about one page per node. A node whose reading
    fails gets ``problem`` and is left; the others go on.

    :param client: a connected asyncua ``Client``.
    :param timeout: seconds per HistoryRead call.
    :raises Exception: what the HistoryRead service call raises (the connection is lost):
        the continuation points the server holds are then left to its timeout.
    """
    from asyncua import ua

    if not nodes:
        return
    details = ua.ReadRawModifiedDetails(
        IsReadModified=False, StartTime=min(n.since for n in nodes),
        EndTime=until or datetime.now(UTC) + timedelta(hours=1), NumValuesPerNode=PAGE, ReturnBounds=False)
    try:
        while True:
            wanted = [n for n in nodes if not n._done and not n._buffer]
            for start in range(0, len(wanted), NODES_PER_CALL):
                batch = wanted[start:start + NODES_PER_CALL]
                params = ua.HistoryReadParameters(
                    HistoryReadDetails=details, TimestampsToReturn=ua.TimestampsToReturn.Both,
                    ReleaseContinuationPoints=False,
                    NodesToRead=[ua.HistoryReadValueId(NodeId=n.node_id, ContinuationPoint=n._continuation)
                                 for n in batch])
                results = await asyncio.wait_for(client.uaclient.history_read(params), timeout)
                for node, result in zip(batch, results, strict=True):
                    _take(node, result)
            reading = [n for n in nodes if not n._done]
            if any(not n._buffer for n in reading):
                continue  # a page the since filter emptied: read on before handing anything on
            # no node still being read holds a value older than the end of its own buffer
            watermark = min((source_of(n._buffer[-1]) for n in reading), default=None)
            out = _merge(nodes, watermark)
            if out:
                await emit(out)
            if not reading and not any(n._buffer for n in nodes):
                return
    except BaseException:
        await _release(client, [n for n in nodes if n._continuation], details, timeout)
        raise


def _take(node: HistoryNode, result: Any) -> None:
    """One node's answer: its values after ``since`` buffered, its continuation kept."""
    status = result.StatusCode
    if status is not None and status.is_bad():
        node.problem = f"{status.name}: {status.doc}" if getattr(status, "doc", "") else status.name
        node._done, node._continuation = True, None
        return
    values = getattr(result.HistoryData, "DataValues", None) or []
    for value in values:
        stamp = source_of(value)
        if stamp is not None and stamp > node.since:
            node._buffer.append(value)
    previous, node._continuation = node._continuation, result.ContinuationPoint or None
    if node._continuation is None or node._continuation == previous or not values:
        node._done, node._continuation = True, None  # no more, or a server making no progress


def _merge(nodes: list[HistoryNode], watermark: datetime | None) -> list[tuple[Hashable, Any]]:
    """The buffered values up to ``watermark`` (all when None), oldest first; a node's
    own order is kept."""
    runs: list[list[tuple[datetime, int, int, Hashable, Any]]] = []
    for index, node in enumerate(nodes):
        run = []
        for i, value in enumerate(node._buffer):
            stamp = source_of(value)
            if watermark is not None and stamp is not None and stamp > watermark:
                break
            run.append((stamp or node.since, index, i, node.key, value))
        cut = len(run)
        if cut:
            runs.append(run)
            del node._buffer[:cut]
            node.count += cut
            node.newest = run[-1][0]
    return [(key, value) for _, _, _, key, value in heapq.merge(*runs)]


async def _release(client: Any, nodes: list[HistoryNode], details: Any, timeout: float) -> None:
    """Free the continuation points the server holds for ``nodes`` (best effort)."""
    from asyncua import ua

    if not nodes:
        return
    params = ua.HistoryReadParameters(
        HistoryReadDetails=details, ReleaseContinuationPoints=True,
        NodesToRead=[ua.HistoryReadValueId(NodeId=n.node_id, ContinuationPoint=n._continuation) for n in nodes])
    try:
        await asyncio.wait_for(client.uaclient.history_read(params), timeout)
    except BaseException as exc:  # noqa: BLE001 - the session may be gone: the server times them out
        _log.debug("releasing %d continuation points: %r", len(nodes), exc)


def start_backfill(session: Session, feed: Feed, why: str) -> None:
    """Hold ``feed``'s live changes and read what its historizing tags changed since
    the last change sent (``feed.last_source``) from the server's history. In subscribe
    mode, tags that do not historize are named in a warning (their changes of the gap
    are lost); a poll reads present values only, so poll mode backfills what it can."""
    tags = [t for t in feed.tags if t.node_id is not None and t.export in feed.last_source]
    lost = [t.export for t in tags if not t.historizing]
    subscribed = session.receiver.mode == "subscribe"
    if lost and subscribed:
        feed.report("warning", f"{len(lost)} tags do not historize on the server ({', '.join(lost[:5])}"
                               f"{', ...' if len(lost) > 5 else ''}): their changes while the "
                               "subscription was down are lost")
    if not session.receiver.history_backfill:
        if len(lost) < len(tags) and subscribed:
            feed.report("warning", "history_backfill is off: changes while the subscription was down "
                                   "are lost")
        return
    if len(lost) == len(tags):
        return
    feed.hold()
    if feed.backfill is not None:
        feed.backfill.cancel()  # a new gap: read from where the last one got
    feed.backfill = asyncio.get_running_loop().create_task(backfill(session, feed, why))


async def backfill(session: Session, feed: Feed, why: str) -> None:
    """Read what ``feed``'s historizing tags changed since ``feed.last_source`` and put it
    in the feed, marked as backfilled, before the live changes held meanwhile; retried
    :data:`BACKFILL_ATTEMPTS` times (1 s doubling) when the connection drops; what cannot
    be read is reported on the stream."""
    historized = {t.export for t in feed.tags if t.historizing}
    exports: dict[Any, list[str]] = {}
    for tag in feed.tags:
        if tag.historizing and tag.node_id is not None:
            exports.setdefault(tag.node_id, []).append(tag.export)

    async def emit(values: list[tuple[Any, Any]]) -> None:
        for node_id, value in values:
            feed.put(exports[node_id], value, backfilled=True)
        while feed.waiting() > MAX_BUFFERED_CHANGES // 2:  # the dataflow takes them first
            await asyncio.sleep(0.05)

    count, attempt, problems = 0, 0, {}
    while True:
        nodes = [HistoryNode(n, n, min(feed.last_source[e] for e in names if e in feed.last_source))
                 for n, names in exports.items() if any(e in feed.last_source for e in names)]
        first = min((n.since for n in nodes), default=None)
        try:
            if session.client is None:
                raise ConnectionError("not connected")
            await read_raw(session.client, nodes, emit, session.conn.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the connection dropped: try again once it is back
            count += sum(n.count for n in nodes)
            attempt += 1
            if attempt >= BACKFILL_ATTEMPTS:
                feed.report("warning", f"reading the server's history failed {attempt} times ({explain(exc)}); "
                                       f"changes since {first} may be missing")
                break
            await asyncio.sleep(min(2.0 ** (attempt - 1), 5.0))
            continue
        count += sum(n.count for n in nodes)
        problems = {n.key: n.problem for n in nodes if n.problem}
        break
    for node_id, problem in problems.items():
        feed.report("warning", f"tag {exports[node_id][0]!r} ({node_id.to_string()}): its history cannot be "
                               f"read ({problem}); its changes while the subscription was down are lost")
    seam = feed.release(historized)
    feed.backfill = None
    _log.info("%s: backfilled %d changes from the server's history (%s, from %s); %d live changes "
              "already backfilled left out", feed.stream.key, count, why,
              first.isoformat() if first else "-", seam)
