"""What the ``mqtt`` receiver and transmit share: connection settings and the paho client.

Both name their keys with MQTT's terms (``host``, ``port``, ``client_id``, ``username``,
``password``, ``keepalive``, ``protocol_version``, ``tls``, ``ca_file``, ``cert_file``,
``key_file``); the field types here carry each key's description and constraints, so
``/v1/meta`` and the docs say the same for both. :func:`new_client` builds a paho-mqtt
1.6 client from them with a persistent session (MQTT 3.1.1 ``clean_session`` false; MQTT
5 ``clean_start`` false and a ``SessionExpiryInterval``).

Implements the connection of issue 16 (OASIS MQTT 3.1.1 section 3.1, MQTT 5.0 section 3.1).
"""

from __future__ import annotations

import re
import ssl
from typing import Annotated, Any, Literal, Protocol

from dataflows.sdk import (
    JsonPath,
    NonEmptyStr,
    Port,
    Violation,
    describe,
    error,
)

Host = Annotated[NonEmptyStr, describe("Hostname or IP address of the broker.")]
BrokerPort = Annotated[Port, describe("TCP port of the broker (8883 with TLS, by convention).")]
ClientId = Annotated[str | None, describe(
    "MQTT client identifier, fixed so the broker keeps the session; "
    "'factoryflow-<name of the component>' by default.")]
Username = Annotated[str | None, describe("User to log in as.")]
Password = Annotated[str | None, describe("Password of the user.", secret=True)]
Keepalive = Annotated[int, describe("Keep-alive interval in seconds.", ge=5)]
ProtocolVersion = Annotated[Literal["3.1.1", "5"], describe("MQTT protocol version.")]
Tls = Annotated[bool, describe("Connect with TLS.")]
CaFile = Annotated[str | None, describe("CA certificates (PEM) to trust; the system's by default.")]
CertFile = Annotated[str | None, describe("Client certificate (PEM), when the broker asks for one.")]
KeyFile = Annotated[str | None, describe("Private key (PEM) of the client certificate.")]

#: The characters a topic name may not hold (wildcards, NUL).
NOT_IN_TOPIC = re.compile(r"[+#\x00]")


class BrokerSettings(Protocol):
    """The connection keys of an ``mqtt`` component."""

    host: str
    port: int
    username: str | None
    password: str | None
    keepalive: int
    protocol_version: str
    tls: bool
    ca_file: str | None
    cert_file: str | None
    key_file: str | None


def new_client(settings: BrokerSettings, client_id: str, *, session_expiry: int = 0, clean: bool = False,
               manual_ack: bool = False) -> tuple[Any, dict[str, Any]]:
    """A paho-mqtt client for ``settings`` with a persistent session (``clean``: a new one
    on every connect, as Sparkplug edge nodes use), not yet connected, and the keyword
    arguments of its ``connect_async``. Callbacks take paho 2's signatures
    (``CallbackAPIVersion.VERSION2``: reason codes and properties on every one).

    :param session_expiry: MQTT 5 only: seconds the broker keeps the session after a
        disconnect (0: until the network connection closes; 3.1.1 sessions are kept
        until the broker expires them).
    :param manual_ack: no PUBACK until the caller's ``client.ack(mid, qos)`` (paho 2).
    """
    import paho.mqtt.client as mqtt

    if settings.protocol_version == "5":
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                             manual_ack=manual_ack)
        connect: dict[str, Any] = {"clean_start": clean}
        if session_expiry:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = session_expiry
            connect["properties"] = properties
    else:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                             protocol=mqtt.MQTTv311, manual_ack=manual_ack)
        connect = {}
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set(ca_certs=settings.ca_file, certfile=settings.cert_file, keyfile=settings.key_file,
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.reconnect_delay_set(1, 30)
    return client, {"keepalive": settings.keepalive, **connect}


def connection_violations(settings: BrokerSettings, path: JsonPath) -> list[Violation]:
    """Errors in the TLS keys of ``settings``: a certificate without its key, files
    without ``tls``."""
    out = []
    if (settings.cert_file is None) != (settings.key_file is None):
        out.append(error("give both 'cert_file' and 'key_file', or neither", path))
    if not settings.tls and any(f is not None for f in (settings.ca_file, settings.cert_file, settings.key_file)):
        out.append(error("'ca_file', 'cert_file' and 'key_file' need \"tls\": true", path))
    if settings.password is not None and settings.username is None:
        out.append(error("'password' needs 'username'", path))
    return out


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` with its ``+`` and ``#`` wildcards
    (MQTT 3.1.1 section 4.7; a filter starting with a wildcard does not match ``$``
    topics)."""
    import paho.mqtt.client as mqtt

    return bool(mqtt.topic_matches_sub(topic_filter, topic))


def filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid topic filter, or None (MQTT 3.1.1 section 4.7.1:
    ``#`` last and alone in its level, ``+`` alone in its level, no NUL)."""
    if not topic_filter:
        return "a topic filter cannot be empty"
    if "\x00" in topic_filter:
        return "a topic filter cannot hold NUL"
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be the last level, alone"
        if "+" in level and level != "+":
            return "'+' must fill a level alone"
    return None
