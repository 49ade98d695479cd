"""Sparkplug B payloads (Eclipse Tahu's protobuf, Sparkplug 3.0), decoded with pysparkplug
for the ``mqtt`` receiver's ``payload_format: sparkplug_b``.

:class:`Sparkplug` keeps what births told (each metric's alias and datatype, from the last
NBIRTH or DBIRTH) and each edge node's last ``seq``, as plain values the stream's state
holds, so an alias still resolves after a restart. NBIRTH, DBIRTH, NDATA and DDATA give
one record per metric timestamp; a ``seq`` gap, an NDEATH and a DDEATH are warnings;
NCMD, DCMD and STATE messages are not records.

Implements the payload and topic rules of the Sparkplug B 3.0 specification (topic
namespace ``spBv1.0``, section 4.1; payloads, chapter 6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pysparkplug import Metric

__all__ = ["SPARKPLUG_NAMESPACE", "BadMessage", "Sparkplug"]

#: The Sparkplug B topic namespace (Sparkplug 3.0, section 4.1).
SPARKPLUG_NAMESPACE = "spBv1.0"


class BadMessage(ValueError):
    """A message that cannot be decoded; the stream is marked and the message skipped."""


@dataclass
class Sparkplug:
    """Decodes Sparkplug B messages, keeping what births told (aliases, datatypes) and
    each edge node's last ``seq``.

    :ivar births: for ``group/node`` or ``group/node/device``, its metrics' ``[name,
        alias or None, datatype]`` from the last NBIRTH or DBIRTH.
    :ivar seq: for ``group/node``, the ``seq`` of its last message.
    """

    births: dict[str, list[list[Any]]] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    _decoders: dict[str, Any] = field(default_factory=dict, repr=False)

    def state(self) -> dict[str, Any]:
        """What :meth:`from_state` takes (plain, picklable)."""
        return {"births": dict(self.births), "seq": dict(self.seq)}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Sparkplug:
        state = state or {}
        return cls(births=dict(state.get("births", {})), seq=dict(state.get("seq", {})))

    def records(self, topic: str, payload: bytes, warn: Callable[[str], None]) -> list[dict[str, Any]]:
        """The records of the message ``payload`` on ``topic`` (none for deaths, commands
        and STATE): one per metric timestamp (UTC), with ``group_id``, ``edge_node_id``,
        ``device_id`` and ``message_type``; ``warn`` takes a ``seq`` gap or a death.

        :raises BadMessage: not a Sparkplug B topic or payload, an alias without a birth.
        """
        import pysparkplug as sp

        levels = topic.split("/")
        if levels[0] != SPARKPLUG_NAMESPACE or len(levels) < 3:
            raise BadMessage(f"not a Sparkplug B topic ({SPARKPLUG_NAMESPACE}/group/type/node[/device])")
        if levels[1] == "STATE" or levels[2] in ("NCMD", "DCMD"):
            return []  # host application state, commands to edge nodes
        if len(levels) not in (4, 5):
            raise BadMessage(f"not a Sparkplug B topic ({SPARKPLUG_NAMESPACE}/group/type/node[/device])")
        group, kind, node = levels[1], levels[2], levels[3]
        device = levels[4] if len(levels) == 5 else None
        node_key = f"{group}/{node}"
        key = f"{node_key}/{device}" if device is not None else node_key
        classes = {"NBIRTH": sp.NBirth, "DBIRTH": sp.DBirth, "NDATA": sp.NData, "DDATA": sp.DData,
                   "NDEATH": sp.NDeath, "DDEATH": sp.DDeath}
        payload_class = classes.get(kind)
        if payload_class is None or (device is None) != (kind[0] == "N"):
            raise BadMessage(f"unknown Sparkplug B message type {kind!r} for this topic")
        if kind == "NDEATH":
            self.seq.pop(node_key, None)
            warn(f"edge node {node_key} went offline (NDEATH on {topic!r})")
            return []
        birth = self._decoder(key) if kind in ("NDATA", "DDATA") else None
        try:
            decoded = payload_class.decode(payload, birth=birth)
        except KeyError as exc:
            raise BadMessage(f"metric alias {exc} is not in the last {'D' if device else 'N'}BIRTH "
                             f"of {key}") from exc
        except NotImplementedError as exc:  # a metric without a datatype, or one pysparkplug lacks
            if kind in ("NDATA", "DDATA") and birth is None:
                raise BadMessage(self._no_birth(key, device)) from exc
            raise BadMessage(f"a metric's datatype is not supported: {exc}") from exc
        except Exception as exc:  # protobuf's and pysparkplug's errors vary
            raise BadMessage(f"not a Sparkplug B {kind} payload: {type(exc).__name__}: {exc}") from exc
        self._check_seq(node_key, kind, getattr(decoded, "seq", None), topic, warn)
        if kind == "DDEATH":
            warn(f"device {key} went offline (DDEATH on {topic!r})")
            return []
        if kind in ("NBIRTH", "DBIRTH"):
            self.births[key] = [[m.name, m.alias, int(m.datatype)] for m in decoded.metrics]
            self._decoders.pop(key, None)
        if any(m.name is None for m in decoded.metrics):
            raise BadMessage(self._no_birth(key, device))
        return _metric_records(decoded.timestamp, decoded.metrics, {
            "group_id": group, "edge_node_id": node, "device_id": device, "message_type": kind})

    @staticmethod
    def _no_birth(key: str, device: str | None) -> str:
        return (f"metrics named by alias only, and no {'D' if device else 'N'}BIRTH of {key} seen yet "
                "(the edge node sends one when it reconnects, or on a Rebirth request)")

    def _decoder(self, key: str) -> Any:
        """An NBIRTH built from the birth of ``key``, for pysparkplug to resolve aliases with."""
        import pysparkplug as sp

        if key not in self._decoders and key in self.births:
            self._decoders[key] = sp.NBirth(timestamp=0, seq=0, metrics=tuple(
                sp.Metric(timestamp=None, name=name, datatype=sp.DataType(datatype), alias=alias)
                for name, alias, datatype in self.births[key]))
        return self._decoders.get(key)

    def _check_seq(self, node_key: str, kind: str, seq: int | None, topic: str,
                   warn: Callable[[str], None]) -> None:
        if seq is None:
            return
        last = self.seq.get(node_key)
        self.seq[node_key] = seq
        if kind == "NBIRTH" or last is None:
            return
        expected = (last + 1) % 256
        if seq != expected:
            missing = (seq - expected) % 256
            warn(f"{topic}: seq {seq} after {last}: {missing} message(s) of edge node {node_key} missing")


def _metric_records(timestamp: int, metrics: tuple[Metric, ...], fields: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per metric timestamp (milliseconds since the epoch; the payload's when a
    metric has none), oldest first, with ``fields`` and each metric's value under its name."""
    by_time: dict[int, dict[str, Any]] = {}
    for metric in metrics:
        if metric.name == "bdSeq":
            continue
        at = metric.timestamp if metric.timestamp is not None else timestamp
        record = by_time.get(at)
        if record is None:
            record = by_time[at] = {"timestamp": datetime.fromtimestamp(at / 1000, UTC), **fields}
        value = None if metric.is_null else metric.value
        record[metric.name] = list(value) if isinstance(value, tuple) else value
    return [by_time[at] for at in sorted(by_time)]
