"""The ``mqtt`` receiver's group commits (connectors._mqtt_session): a burst shares commits,
no PUBACK goes out before its message is in the buffer file, and a message that paho's
thread leaves queued (something else was readable) is committed by the lingering thread, a
message the broker sends again with DUP set is buffered once, and an error in paho's thread
cuts the connection instead of ending the thread."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from dataflows.testing import poll_until
from tests.connectors.receivers.test_mqtt import Receiver, entry, presubscribe, publish
from tests.services.mosquitto import Mosquitto


def test_a_burst_shares_commits_and_each_puback_follows_its_commit(mosquitto: Mosquitto, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 QoS 1 messages queued for the session arrive in a burst: they reach the buffer
    in order, in far fewer commits than messages, and at each PUBACK its packet identifier
    is already in the buffer file, read through a connection of its own (which sees only
    committed rows)."""
    import paho.mqtt.client as mqtt

    from connectors._mqtt_session import BufferedSession

    p = uuid.uuid4().hex[:6]
    config = entry(mosquitto, [{"asset": "a", "stream_type": "s", "topic": f"{p}/#"}])
    home = tmp_path / "home"
    presubscribe(mosquitto, config)
    publish(mosquitto, [(f"{p}/x", json.dumps({"seq": i})) for i in range(2000)])
    buffer = home / "components" / "mqtt" / "messages.sqlite"
    early: list[int] = []
    acks: list[int] = []
    reader: list[sqlite3.Connection] = []
    ack = mqtt.Client.ack

    def checked_ack(client: Any, mid: int, qos: int) -> Any:
        if not reader:
            reader.append(sqlite3.connect(buffer, check_same_thread=False))
        if reader[0].execute("SELECT 1 FROM packets WHERE mid = ?", (mid,)).fetchone() is None:
            early.append(mid)
        acks.append(mid)
        return ack(client, mid, qos)

    commits: list[int] = []
    commit = BufferedSession._commit

    def counted_commit(self: BufferedSession, batch: list[Any]) -> None:
        commits.append(len(batch))
        commit(self, batch)

    monkeypatch.setattr(mqtt.Client, "ack", checked_ack)
    monkeypatch.setattr(BufferedSession, "_commit", counted_commit)
    receiver = Receiver(config, home)
    got = receiver.rows({"a:s": 2000}, timeout=60)["a:s"]
    poll_until(lambda: len(acks) >= 2000, timeout=10, what="2,000 PUBACKs")
    receiver.close()
    for connection in reader:
        connection.close()
    assert got["seq"].to_list() == list(range(2000))
    assert early == [], f"{len(early)} PUBACKs went out before their message was committed"
    assert sorted(acks) == acks and len(set(acks)) == 2000  # in the order the broker sent them
    assert sum(commits) == 2000 and len(commits) <= 200, f"{len(commits)} commits for 2,000 messages"


class Client:
    """What the session's commits acknowledge through, and the socket it asks for more."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.acks: list[tuple[int, int, float]] = []  # (mid, qos, time.monotonic())
        self._sock = sock

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos, time.monotonic()))

    def socket(self) -> socket.socket | None:  # None: nothing more to read, commit at once
        return self._sock


def message(mid: int, payload: bytes, dup: bool = False, topic: bytes = b"p/x") -> Any:
    """A QoS 1 PUBLISH as paho hands it to ``on_message``."""
    from paho.mqtt.client import MQTTMessage

    out = MQTTMessage(mid, topic)
    out.payload, out.qos, out.dup = payload, 1, dup
    return out


def connected(mosquitto: Mosquitto, home: Path, topic: str) -> tuple[Receiver, Any]:
    """A receiver of one stream on ``topic``, and its session once connected."""
    receiver = Receiver(entry(mosquitto, [{"asset": "a", "stream_type": "s", "topic": topic}]), home)
    session = receiver.parts["a:s"]._reader._session
    session.start()
    receiver.pump(lambda _: session._connected)
    return receiver, session


def test_a_message_sent_again_with_dup_is_buffered_once(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The broker sends a message again, DUP set and the same packet identifier, when our
    PUBACK was lost: the buffer has it already. Another message that reuses the
    identifier later is new. Each is acknowledged, in the order it came, after the commit."""
    receiver, session = connected(mosquitto, tmp_path / "home", "p/#")
    client = Client()
    for mid, payload, dup in ((7, b'{"seq": 0}', False), (7, b'{"seq": 0}', True), (8, b'{"seq": 1}', False),
                              (7, b'{"seq": 2}', True), (7, b'{"seq": 2}', True)):
        session._on_message(client, None, message(mid, payload, dup))
    got = receiver.rows({"a:s": 3})["a:s"]
    receiver.close()
    assert got["seq"].to_list() == [0, 1, 2]
    assert [(mid, qos) for mid, qos, _ in client.acks] == [(7, 1), (7, 1), (8, 1), (7, 1), (7, 1)]


def test_a_message_left_queued_is_committed_by_the_lingering_thread(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """When paho's thread finds more to read after a message (here a byte no PUBLISH
    follows), the message waits in the queue, unacknowledged; the lingering thread commits
    it and sends its PUBACK once nothing more came for ``LINGER`` s."""
    from connectors._mqtt_session import LINGER

    near, far = socket.socketpair()
    far.send(b"\xd0")  # readable: a PINGRESP's first byte, say
    receiver, session = connected(mosquitto, tmp_path / "home", "q/#")
    client = Client(near)
    queued = time.monotonic()
    session._on_message(client, None, message(41, b'{"seq": 7}', topic=b"q/x"))
    assert client.acks == []  # more to read: not committed, not acknowledged yet
    got = receiver.rows({"a:s": 1})["a:s"]
    poll_until(lambda: client.acks, timeout=5, what="the PUBACK")
    receiver.close()
    near.close()
    far.close()
    assert got["seq"].to_list() == [7]
    ((mid, _, at),) = client.acks
    assert mid == 41 and at - queued >= LINGER


@pytest.mark.parametrize(("failing", "lingering"), [("_on_connect", False), ("_commit", False), ("_commit", True)])
def test_an_error_in_pahos_thread_cuts_the_connection_and_the_session_comes_back(
        failing: str, lingering: bool, mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """paho re-raises a callback's error, which ends its network thread and every later
    reconnection without a word. A failing buffer write when the session is set up (on the
    CONNACK), or an unforeseen error in a commit (on paho's thread or the lingering one),
    instead marks the streams, cuts the connection, and the session comes back; the broker
    sends again what was not acknowledged."""
    from connectors._mqtt_session import BufferedSession

    p = uuid.uuid4().hex[:6]
    config = entry(mosquitto, [{"asset": "a", "stream_type": "s", "topic": f"{p}/#"}])
    presubscribe(mosquitto, config)
    publish(mosquitto, [(f"{p}/x", json.dumps({"seq": i})) for i in range(50)])
    original = getattr(BufferedSession, failing)
    failures = [sqlite3.OperationalError("disk I/O error") if failing == "_on_connect" else KeyError("surprise")]

    def fails_once(self: BufferedSession, *args: Any) -> None:
        if failures:
            raise failures.pop()
        original(self, *args)

    monkeypatch.setattr(BufferedSession, failing, fails_once)
    if lingering:  # paho's thread always finds more to read: the lingering thread commits
        monkeypatch.setattr(BufferedSession, "_more_to_read", lambda *_: True)
    receiver = Receiver(config, tmp_path / "home")
    marked: set[tuple[str, str]] = set()

    def seen(got: dict[str, Any]) -> bool:
        marked.update((m.category, m.message) for m in receiver.markers())
        return bool(marked) and got["a:s"].height >= 50

    got = receiver.pump(seen, timeout=60)["a:s"]
    receiver.pump(lambda _: not receiver.markers())  # cleared once the session is back
    receiver.close()
    what = {"_on_connect": "handling the CONNACK failed (OperationalError: disk I/O error)",
            "_commit": "committing the buffer failed (KeyError: 'surprise')"}[failing]  # either thread
    ((category, message),) = marked
    assert category == "mqtt" and f"127.0.0.1:{mosquitto.port}: {what}; reconnecting" in message, message
    assert sorted(got["seq"].to_list()) == list(range(50)) and got.height == 50  # each once
