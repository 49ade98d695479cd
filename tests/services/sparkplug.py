"""A Sparkplug B edge node for the tests: births, data and deaths, encoded with the Sparkplug B
payload of ``connectors._sparkplug_proto`` (checked against Tahu's in ``test_sparkplug_proto``),
published through a broker with paho. Outside encoders (Tahu's Java edge node, Cirrus Link's
client) are ``tests/services/tahu.py`` and ``tests/services/cirruslink.py``.

Sparkplug 3.0: topics ``spBv1.0/<group>/<type>/<edge node>[/<device>]``; every message of
an edge node carries ``seq`` (0 in NBIRTH, then +1 per message, modulo 256); NBIRTH and
DBIRTH name each metric with its alias and datatype, NDATA and DDATA send aliases only.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from connectors._sparkplug_proto import DataType, Payload, set_value
from tests.services.mosquitto import Mosquitto


def millis(moment: datetime) -> int:
    """Milliseconds since the epoch (Sparkplug's timestamps)."""
    return int(moment.timestamp() * 1000)


class EdgeNode:
    """A Sparkplug B edge node ``group/node`` publishing at QoS 1 on ``broker``'s anonymous
    listener; paho keeps what it published while the broker is away and sends it on its
    reconnect. Metrics are ``(name, alias, DataType)``.
    """

    def __init__(self, broker: Mosquitto, group: str, node: str) -> None:
        import paho.mqtt.client as mqtt

        self.group, self.node = group, node
        self._seq = -1
        self._connected = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-{group}-{node}",
                                   clean_session=False)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(0.2, 2)
        self._client.on_connect = lambda *_: self._connected.set()
        self._client.on_disconnect = lambda *_: self._connected.clear()
        self._acknowledged: set[int] = set()  # the mids of PUBACKs (also for what waited for a reconnect)
        self._client.on_publish = lambda _client, _userdata, mid, *_: self._acknowledged.add(mid)
        self._client.connect_async("127.0.0.1", broker.port, keepalive=10)
        self._client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("the edge node did not connect within 10 s")
        self._mids: list[int] = []
        self.births: dict[str | None, dict[int, tuple[str, Any]]] = {}

    def topic(self, kind: str, device: str | None = None) -> str:
        """``spBv1.0/group/kind/node[/device]``."""
        return "/".join(["spBv1.0", self.group, kind, self.node, *([device] if device else [])])

    def next_seq(self) -> int:
        """The ``seq`` of the next message (0 after a birth of the node)."""
        self._seq = (self._seq + 1) % 256
        return self._seq

    def skip(self, count: int) -> None:
        """Lose ``count`` messages: the next ``seq`` jumps over them."""
        self._seq = (self._seq + count) % 256

    def publish(self, topic: str, payload: bytes) -> None:
        self._mids.append(self._client.publish(topic, payload, qos=1).mid)

    def nbirth(self, metrics: list[tuple[str, int, Any]], values: dict[str, Any], at: datetime) -> None:
        """An NBIRTH (``seq`` 0, ``bdSeq`` 0) naming ``metrics`` with their present ``values``."""
        self._seq = -1
        self._birth(None, [("bdSeq", None, DataType.Int64), *metrics], {"bdSeq": 0, **values}, at)

    def dbirth(self, device: str, metrics: list[tuple[str, int, Any]], values: dict[str, Any],
               at: datetime) -> None:
        """A DBIRTH of ``device``."""
        self._birth(device, metrics, values, at)

    def _birth(self, device: str | None, metrics: list[tuple[str, int | None, Any]], values: dict[str, Any],
               at: datetime) -> None:
        self.births[device] = {alias: (name, datatype) for name, alias, datatype in metrics if alias is not None}
        payload = Payload(timestamp=millis(at), seq=self.next_seq())
        for name, alias, datatype in metrics:  # births name every metric with its datatype
            metric = payload.metrics.add(timestamp=millis(at), name=name, datatype=datatype)
            if alias is not None:
                metric.alias = alias
            set_value(metric, datatype, values.get(name))
        self.publish(self.topic("DBIRTH" if device else "NBIRTH", device), payload.SerializeToString())

    def data(self, device: str | None, samples: list[tuple[int, Any, datetime | None]], at: datetime) -> None:
        """An NDATA (``device`` None) or DDATA of ``(alias, value, metric timestamp)``, aliases only."""
        births = self.births[device]
        payload = Payload(timestamp=millis(at), seq=self.next_seq())
        for alias, value, when in samples:
            metric = payload.metrics.add(alias=alias)
            if when:
                metric.timestamp = millis(when)
            set_value(metric, births[alias][1], value)
        self.publish(self.topic("DDATA" if device else "NDATA", device), payload.SerializeToString())

    def ddeath(self, device: str, at: datetime) -> None:
        """A DDEATH of ``device``."""
        payload = Payload(timestamp=millis(at), seq=self.next_seq())
        self.publish(self.topic("DDEATH", device), payload.SerializeToString())

    def ndeath(self) -> None:
        """An NDEATH (``bdSeq`` 0), as the broker publishes for a node that vanished."""
        payload = Payload()
        payload.metrics.add(name="bdSeq", datatype=DataType.Int64, long_value=0)
        self.publish(self.topic("NDEATH"), payload.SerializeToString())

    def wait(self, timeout: float = 60.0) -> int:
        """Wait until the broker acknowledged everything published; how many messages that is.

        :raises TimeoutError: some were not acknowledged within ``timeout`` s.
        """
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._acknowledged.issuperset(self._mids):
                return len(self._mids)
            time.sleep(0.05)
        raise TimeoutError(f"{len(set(self._mids) - self._acknowledged)} messages unacknowledged")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

