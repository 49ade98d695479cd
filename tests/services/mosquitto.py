"""Mosquitto (Debian's ``mosquitto`` package) with a private config on 127.0.0.1 and free
ports, three listeners:

- ``port``: anonymous;
- ``password_port``: user ``PASSWORD_USER`` with ``PASSWORD`` (a ``mosquitto_passwd`` file);
- ``tls_port``: TLS with the test certificate (:mod:`tests.services.tls`), a client
  certificate signed by it required, and the same user.

Persistence is on in its temporary directory (saved on every change), so a broker
stopped and started again keeps its sessions and queued QoS 1 messages. Everything is
removed on stop.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services.process import ServerProcess, debian_bin, free_port
from tests.services.tls import TestCertificate, make_certificate, make_client_certificate

PASSWORD_USER = "collector"
PASSWORD = "mqtt-test-password"


@dataclass
class Mosquitto:
    """A running broker: its three ports, the CA that signed its certificate and the
    client certificate it accepts."""

    port: int
    password_port: int
    tls_port: int
    certificate: TestCertificate
    client_cert: Path
    client_key: Path
    process: ServerProcess

    def start(self) -> None:
        """Start it (again), on the same ports, with what it persisted."""
        def ready() -> bool:
            for port in (self.port, self.password_port, self.tls_port):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True

        self.process.start(ready, timeout=30)

    def stop(self) -> None:
        """Stop it (SIGTERM: it saves what it holds)."""
        self.process.stop()

    def kill(self) -> None:
        """Kill it (SIGKILL: what it did not save yet is gone)."""
        self.process.kill()


@contextmanager
def mosquitto_broker() -> Iterator[Mosquitto]:
    """Start Mosquitto on free ports, yield it, stop it and delete everything it kept."""
    root = Path(tempfile.mkdtemp(prefix="factoryflow-mosquitto-"))
    certificate = make_certificate(root / "tls")
    client_cert, client_key = make_client_certificate(certificate, root / "tls")
    passwords = root / "passwd"
    subprocess.run([debian_bin("mosquitto_passwd", "Mosquitto"), "-b", "-c", str(passwords), PASSWORD_USER, PASSWORD],
                   check=True, capture_output=True)
    passwords.chmod(0o600)
    port, password_port, tls_port = free_port(), free_port(), free_port()
    conf = root / "mosquitto.conf"
    conf.write_text("\n".join([
        "per_listener_settings true",
        f"user {getpass.getuser()}",
        "persistence true",
        f"persistence_location {root}/",
        "autosave_interval 1",
        "autosave_on_changes true",
        "max_queued_messages 100000",  # for an offline persistent session (default 1000)
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        f"listener {password_port} 127.0.0.1",
        "allow_anonymous false",
        f"password_file {passwords}",
        f"listener {tls_port} 127.0.0.1",
        "allow_anonymous false",
        f"password_file {passwords}",
        f"cafile {certificate.cert}",
        f"certfile {certificate.cert}",
        f"keyfile {certificate.key}",
        "require_certificate true",
        "",
    ]))
    process = ServerProcess("mosquitto", [debian_bin("mosquitto", "Mosquitto"), "-c", str(conf)], root / "mosquitto.log")
    broker = Mosquitto(port, password_port, tls_port, certificate, client_cert, client_key, process)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


class Subscriber:
    """A QoS 1 subscriber on the anonymous listener with a persistent session
    (``clean_session`` false, a fixed client id), collecting ``(topic, payload)`` in order
    of arrival; what is published while it is away arrives when it comes back.

    :raises TimeoutError: it did not subscribe within 10 s.
    """

    def __init__(self, broker: Mosquitto, topic_filter: str, client_id: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self._client.on_connect = lambda client, *_: client.subscribe(topic_filter, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.2, 2)
        self._client.connect_async("127.0.0.1", broker.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError(f"no subscription to {topic_filter!r} within 10 s")

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def received(self) -> list[tuple[str, bytes]]:
        """What arrived so far."""
        with self._lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 60.0) -> list[tuple[str, bytes]]:
        """Wait until ``count`` messages arrived; what arrived (fewer after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.messages) < count:
            time.sleep(0.05)
        return self.received()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
