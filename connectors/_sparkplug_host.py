"""A Sparkplug B host application's reading of a stream, for the ``mqtt`` receiver: what
no birth explains is held and a rebirth is asked for; an optional reorder window; the
Primary Host Application's STATE payloads. Decoding is :mod:`connectors._sparkplug`'s.

Implements the host application's duties of Sparkplug B 3.0: Rebirth requests (section
5.2 and 6.4.20), sequence numbers and the Reorder Timeout (5.3, 5.8), the Primary Host
Application's STATE (7.1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connectors._sparkplug import (
    KINDS,
    SPARKPLUG_NAMESPACE,
    BadMessage,
    NoBirth,
    Sparkplug,
    parse_payload,
)
from connectors._sparkplug_proto import DataType, Payload

__all__ = ["HostSettings", "SparkplugHost", "rebirth_request", "state_payload"]


def rebirth_request() -> bytes:
    """An NCMD payload asking an edge node for a rebirth: ``Node Control/Rebirth`` = true
    (Sparkplug 3.0 section 6.4.20)."""
    payload = Payload(timestamp=int(datetime.now(UTC).timestamp() * 1000))
    payload.metrics.add(name="Node Control/Rebirth", datatype=DataType.Boolean, boolean_value=True)
    return payload.SerializeToString()


def state_payload(online: bool, timestamp: int) -> bytes:
    """A Primary Host Application's ``spBv1.0/STATE/<host_id>`` payload, the 3.0 JSON form
    ``{"online": …, "timestamp": …}`` (milliseconds since the epoch, UTC; section 7.1.1)."""
    return f'{{"online": {"true" if online else "false"}, "timestamp": {timestamp}}}'.encode()


@dataclass
class HostSettings:
    """A host application's choices (the ``mqtt`` receiver's ``sparkplug_*`` keys).

    :ivar rebirth: publish Rebirth NCMDs.
    :ivar rebirth_interval: seconds between two requests to one edge node.
    :ivar hold_messages: messages held per edge node while its births are awaited.
    :ivar reorder_timeout: seconds an out-of-sequence message waits for the ones before it (0: none).
    """

    rebirth: bool = True
    rebirth_interval: float = 5.0
    hold_messages: int = 10_000
    reorder_timeout: float = 0.0


@dataclass
class SparkplugHost:
    """A Sparkplug host application's reading of one stream: decodes with :class:`Sparkplug`;
    data no birth explains is held (per edge node, bounded) and a rebirth requested through
    ``request`` (a seq gap asks too); the held messages are read once the births arrived.
    With a ``reorder_timeout``, a message ahead of its ``seq`` waits that long for the ones
    before it. A message is ``(topic, payload, received, ident)``: ``received`` in seconds
    since the epoch (UTC), ``ident`` its id in the receiver's buffer (:meth:`oldest_kept`:
    the buffer keeps what is held until it is read).

    Implements the host's duties of Sparkplug B 3.0 sections 5.2 (Rebirth), 5.3 and 5.8
    (sequence numbers, the Reorder Timeout).
    """

    sparkplug: Sparkplug
    settings: HostSettings
    request: Callable[[str, str], None]  # (node key, why) -> publish the NCMD
    held: dict[str, list[tuple[str, bytes, float, int]]] = field(default_factory=dict)
    waiting: dict[str, list[tuple[int, str, bytes, float, int]]] = field(default_factory=dict)
    _asked: dict[str, float] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """What :meth:`from_state` takes: the decoder's state and the held messages."""
        return {**self.sparkplug.state(), "held": {k: list(v) for k, v in self.held.items() if v},
                "waiting": {k: list(v) for k, v in self.waiting.items() if v}}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, settings: HostSettings,
                   request: Callable[[str, str], None]) -> SparkplugHost:
        """The host whose :meth:`state` gave ``state`` (a new one for None)."""
        state = state or {}
        return cls(Sparkplug.from_state(state), settings, request,
                   held={k: [tuple(m) for m in v] for k, v in state.get("held", {}).items()},
                   waiting={k: [tuple(m) for m in v] for k, v in state.get("waiting", {}).items()})

    def oldest_kept(self) -> int | None:
        """The buffer id of the oldest message held or waiting (None: none): the receiver's
        buffer must keep it and those after it, since only memory holds them until the
        stream's next snapshot."""
        ids = [m[-1] for kept in (*self.held.values(), *self.waiting.values()) for m in kept]
        return min(ids) if ids else None

    def read(self, topic: str, payload: bytes, received: float, warn: Callable[[str], None],
             ident: int = 0) -> list[dict[str, Any]]:
        """The records of one message (``ident``: its buffer id) and of the held ones it
        lets through.

        :raises BadMessage: not a Sparkplug B topic or payload (the message is skipped).
        """
        node = _node_of(topic)
        if node is None:
            return self.sparkplug.records(topic, payload, warn)
        if self.settings.reorder_timeout > 0 and topic.split("/")[2] != "NBIRTH":
            ahead = self._ahead(node, payload)
            if ahead is not None:
                self.waiting.setdefault(node, []).append((ahead, topic, payload, received, ident))
                return []
        out = self._read(node, (topic, payload, received, ident), warn)
        return out + self._release(node, warn, everything=False)

    def due(self, now: float, warn: Callable[[str], None]) -> list[dict[str, Any]]:
        """The records of messages whose reorder wait ended by ``now`` (seconds since the
        epoch): the missing ones are taken as lost, the gap is warned of and a rebirth asked."""
        out: list[dict[str, Any]] = []
        for node, waiting in list(self.waiting.items()):
            if waiting and min(m[3] for m in waiting) + self.settings.reorder_timeout <= now:
                out += self._release(node, warn, everything=True)
        return out

    def _ahead(self, node: str, payload: bytes) -> int | None:
        """How far ahead of the next ``seq`` of ``node`` the message is (None: in order)."""
        last = self.sparkplug.seq.get(node)
        if last is None:
            return None
        try:
            message = parse_payload(payload)
        except BadMessage:
            return None
        if not message.HasField("seq"):
            return None
        ahead = (message.seq - last - 1) % 256
        return ahead if 0 < ahead < 128 else None

    def _release(self, node: str, warn: Callable[[str], None], *, everything: bool) -> list[dict[str, Any]]:
        """Read the waiting messages of ``node`` that are next in ``seq`` (all, in ``seq``
        order, when ``everything``)."""
        out: list[dict[str, Any]] = []
        waiting = self.waiting.get(node)
        while waiting:
            last = self.sparkplug.seq.get(node, -1)
            waiting.sort(key=lambda m: (parse_payload(m[2]).seq - last - 1) % 256)
            nxt = parse_payload(waiting[0][2]).seq
            if not everything and nxt != (last + 1) % 256:
                break
            _, topic, *message = waiting.pop(0)
            try:
                out += self._read(node, (topic, *message), warn)  # type: ignore[arg-type]
            except BadMessage as exc:
                warn(f"{topic}: {exc}; skipped")
        return out

    def _read(self, node: str, message: tuple[str, bytes, float, int],
              warn: Callable[[str], None]) -> list[dict[str, Any]]:
        held = self.held.get(node)
        topic, payload = message[0], message[1]
        kind = topic.split("/")[2]
        if held and kind not in ("NBIRTH", "DBIRTH", "NDEATH", "DDEATH"):
            self._hold(node, message, "its births are awaited", warn)
            return []
        gaps = len(self.sparkplug.gaps)
        try:
            out = self.sparkplug.records(topic, payload, warn)
        except NoBirth as exc:
            self._hold(node, message, str(exc), warn)
            return []
        if len(self.sparkplug.gaps) > gaps:
            self._ask(node, "a seq gap")
        if held and kind in ("NBIRTH", "DBIRTH"):
            out += self._replay(node, warn)
        return out

    def _replay(self, node: str, warn: Callable[[str], None]) -> list[dict[str, Any]]:
        """The records of the held messages of ``node`` that the births now explain, oldest
        first; the first one still unexplained and those after it stay held."""
        held = self.held[node]
        out: list[dict[str, Any]] = []
        while held:
            topic, payload = held[0][0], held[0][1]
            try:
                out += self.sparkplug.records(topic, payload, warn, check_seq=False)
            except NoBirth:
                break
            except BadMessage as exc:
                warn(f"{topic} (held): {exc}; skipped")
            held.pop(0)
        if not held:
            del self.held[node]
        return out

    def _hold(self, node: str, message: tuple[str, bytes, float, int], why: str,
              warn: Callable[[str], None]) -> None:
        held = self.held.setdefault(node, [])
        held.append(message)
        if len(held) > self.settings.hold_messages:
            dropped = held.pop(0)
            warn(f"{dropped[0]}: more than {self.settings.hold_messages} messages of edge node {node} held "
                 f"(sparkplug_hold_messages) while its births are awaited: the oldest is dropped")
        self._ask(node, why)

    def _ask(self, node: str, why: str) -> None:
        now = datetime.now(UTC).timestamp()
        if self.settings.rebirth and now - self._asked.get(node, -1e9) >= self.settings.rebirth_interval:
            self._asked[node] = now
            self.request(node, why)


def _node_of(topic: str) -> str | None:
    """``group/node`` of a Sparkplug B edge node's NBIRTH/DBIRTH/NDATA/DDATA/NDEATH/DDEATH topic."""
    levels = topic.split("/")
    if len(levels) in (4, 5) and levels[0] == SPARKPLUG_NAMESPACE and levels[2] in KINDS:
        return f"{levels[1]}/{levels[3]}"
    return None
