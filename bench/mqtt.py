"""MQTT receive rows: the ``mqtt`` receiver's broker session draining a persistent session's
queue of QoS 1 messages into its buffer, beside a plain paho subscriber draining the same
queue (the limit) and paho with one SQLite commit per message before its PUBACK (the
receiver's buffer before group commits: the floor of that design).

Each run queues ``messages`` JSON messages (one NAB reading each, about 70 bytes) at
Mosquitto for a new client id (subscribed once at QoS 1 with a persistent session, then
offline), then that client connects and is timed from its connect to its last message: the
plain subscriber's last ``on_message``, the per-message commit's last commit, the receiver's
last message in its buffer (committed, its PUBACK sent after). Mosquitto runs without
persistence here (the tests' broker saves its store on every change, and then is the limit
at about 1,500 messages/s). CPU is this process's (paho's thread, the session's lingering
thread, the polling of the buffer's last id).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import Measure, nab

TOPIC = "plant/press/temperature"


@contextmanager
def broker() -> Iterator[int]:
    """Mosquitto on a free loopback port, in memory, queueing up to 1,000,000 messages for an
    offline session; yields its port, stops it (by PID)."""
    from tests.services.process import ServerProcess, debian_bin, free_port

    with tempfile.TemporaryDirectory(prefix="factoryflow-bench-mosquitto-") as root:
        port = free_port()
        conf = Path(root) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n")
        process = ServerProcess("mosquitto", [debian_bin("mosquitto", "Mosquitto"), "-c", str(conf)],
                                Path(root) / "mosquitto.log")

        def ready() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        process.start(ready)
        try:
            yield port
        finally:
            process.stop()


def _client(client_id: str, clean: bool) -> Any:
    import paho.mqtt.client as mqtt

    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)


def queue(port: int, client_id: str, messages: int) -> None:
    """Subscribe ``client_id`` (persistent, QoS 1) once, then publish ``messages`` for it to
    find queued; returns once the broker acknowledged them all."""
    subscribed = threading.Event()
    client = _client(client_id, clean=False)
    client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(10):
        raise TimeoutError("no SUBACK within 10 s")
    client.disconnect()
    client.loop_stop()
    readings = nab()["value"].to_list()
    publisher = _client(f"bench-pub-{uuid.uuid4().hex[:8]}", clean=True)
    publisher.max_inflight_messages_set(1000)
    publisher.max_queued_messages_set(0)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    infos = [publisher.publish(TOPIC, json.dumps({"seq": i, "value": readings[i % len(readings)]}), qos=1)
             for i in range(messages)]
    for info in infos:
        info.wait_for_publish(60)
    publisher.disconnect()
    publisher.loop_stop()


def _drain(port: int, client_id: str, messages: int, on_message: Any) -> Measure:
    done = threading.Event()
    count = [0]

    def received(_client: Any, _userdata: Any, message: Any) -> None:
        on_message(message)
        count[0] += 1
        if count[0] == messages:
            done.set()

    client = _client(client_id, clean=False)
    client.on_message = received
    cpu, started = time.process_time(), time.perf_counter()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not done.wait(600):
        raise TimeoutError(f"{count[0]} of {messages} messages in 600 s")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    client.disconnect()
    client.loop_stop()
    return Measure(messages, seconds, cpu)


def plain(port: int, messages: int) -> Measure:
    """A plain paho subscriber: each message counted, PUBACK when the callback returns."""
    client_id = f"bench-plain-{uuid.uuid4().hex[:8]}"
    queue(port, client_id, messages)
    measure = _drain(port, client_id, messages, lambda _message: None)
    measure.note = "paho 2, PUBACK after on_message"
    return measure


def commit_each(port: int, messages: int) -> Measure:
    """paho with each message committed to SQLite (WAL, ``synchronous=FULL``, as the
    receiver's buffer) in ``on_message``, before paho's PUBACK: one fsync per message."""
    client_id = f"bench-each-{uuid.uuid4().hex[:8]}"
    queue(port, client_id, messages)
    with tempfile.TemporaryDirectory(prefix="factoryflow-bench-mqtt-") as work:
        db = sqlite3.connect(Path(work) / "buffer.sqlite", isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, topic TEXT, payload BLOB)")

        def commit(message: Any) -> None:
            with db:
                db.execute("INSERT INTO messages (topic, payload) VALUES (?, ?)", (message.topic, message.payload))

        measure = _drain(port, client_id, messages, commit)
        db.close()
    measure.note = "one SQLite commit per message, then its PUBACK"
    return measure


def receiver(port: int, messages: int) -> Measure:
    """The ``mqtt`` receiver's :class:`connectors._mqtt_session.BufferedSession`: timed from
    its start to the last message in its buffer (its id, polled every 10 ms)."""
    from connectors._mqtt_session import BufferedSession
    from dataflows.sdk import RunContext
    from dataflows.testing import load_receiver

    client_id = f"bench-ff-{uuid.uuid4().hex[:8]}"
    queue(port, client_id, messages)
    config = {"data_receiver_name": "mqtt", "protocol": "mqtt", "host": "127.0.0.1", "port": port,
              "client_id": client_id, "topic": TOPIC, "streams": [{"asset": "press", "stream_type": "temperature"}]}
    with tempfile.TemporaryDirectory(prefix="factoryflow-bench-mqtt-") as work:
        session = BufferedSession(load_receiver(config), RunContext(home=Path(work)))
        session.users = 1
        cpu, started = time.process_time(), time.perf_counter()
        session.start()
        buffer = Path(work) / "components" / "mqtt" / "messages.sqlite"
        while not buffer.exists():
            time.sleep(0.01)
        with sqlite3.connect(buffer) as db:
            deadline = time.monotonic() + 600
            while (db.execute("SELECT max(id) FROM messages").fetchone()[0] or 0) < messages:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not all {messages} messages buffered in 600 s")
                time.sleep(0.01)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        session.release()
    return Measure(messages, seconds, cpu, note="group commits, each PUBACK after its commit")
