"""The ``opcua`` receiver: tags of an OPC UA server, polled or subscribed, with asyncua.

Implements FactoryTX's OPCUA receiver config (``shared/specs/factorytx-rest-api.txt``,
template ``OPCUA``; ``shared/specs/factorytx-digest.md``) on OPC UA's Read service and
subscriptions (OPC UA Part 4: Read, CreateSubscription, CreateMonitoredItems, Publish).
``docs/opcua.md`` is the user's guide.

**Keys.** FactoryTX's, verbatim: ``connections: [{host, port, timeout}]`` and per stream
``opcua_tags: [{name, exportname, namespace_index}]``. A tag's ``name`` is a string
identifier in ``namespace_index`` (when omitted: the first namespace, from 1, that holds
a node with that identifier, as Kepware's ``ns=2`` tags are found), a full NodeId
(``ns=2;s=Line1.Temp``, ``ns=3;i=1001``, ``i=2258``) or a browse path from the root
(``/Objects/2:Line1/2:Temp``). A connection may give ``endpoint`` (``opc.tcp://...``)
instead of ``host``/``port``, ``security_mode``, ``security_policy``, ``username`` and
``password``, client ``certificate`` and ``private_key`` paths (a self-signed pair is
made under the receiver's data directory when omitted) and a trusted
``server_certificate``. The receiver's ``mode`` is ``poll`` or ``subscribe``.

**Poll mode.** Every ``poll_interval`` seconds, one Read service call for all the
stream's nodes; one record per poll: ``timestamp`` (the newest source timestamp of the
answer, UTC) and each tag under its ``exportname``. ``on_change`` drops a poll whose
values and status codes all equal the last record's.

**Subscribe mode.** One subscription per stream (``publishing_interval``) with a
monitored item per tag (``sampling_interval``, ``queue_size``); one record per data
change: ``timestamp`` (source timestamp, UTC), ``server_timestamp``, ``status_code``
(the status's name, ``Good``, ``BadNodeIdUnknown``...), ``backfill`` and the value under
the tag's ``exportname`` (the stream's other tags are null in that record); changes of
several tags with the same source timestamp and status share a record. The changes that
arrived since the last poll become one frame.

**Threads.** bytewax's ``next_batch`` never waits for the server: each receiver has one
asyncio event loop on its own thread per worker, holding one asyncua client per
connection. The loop keeps running between polls, as OPC UA needs (keep-alive probes,
Publish requests, channel renewal, reconnects), which is why the loop does not run
inside ``next_batch`` the way bytewax's ``batch_async`` bridge would run it. A stream's
``read`` only takes what the loop gathered and, in poll mode, asks for the next Read;
the runtime wakes it through ``next_awake`` at the next poll. The engine is in
:mod:`connectors._opcua`, the stream reader in :mod:`connectors.receivers._opcua_reader`, the ``browse``
command in :mod:`connectors._opcua_browse`.

**Recovery.** The first connection is retried with backoff (1 s doubling up to 5 s)
until it succeeds. Once connected, asyncua's supervisor probes the server every
``watchdog_interval`` seconds and, on a lost connection, reconnects with backoff (1 s
doubling up to 5 s): it activates the old session on a new channel or creates a new
one, and transfers or re-creates the subscription with every monitored item. One line
is logged when the connection is lost and one when it is back. While the connection is down, each stream carries an error marker (category ``opcua``) naming
the endpoint and the cause; the first poll after the reconnect clears it. A tag whose
node does not exist (``BadNodeIdUnknown``), or whose value comes back with a Bad
status, marks the stream (category ``input``) with its NodeId; the stream's other tags
go on.

**Types.** Values keep their OPC UA type: Boolean → Boolean, SByte..UInt64 → Int8..UInt64,
Float → Float32, Double → Float64, String, XmlElement, Guid, NodeId, QualifiedName,
LocalizedText (its text) and StatusCode (its name) → String, DateTime → Datetime(UTC),
ByteString → Binary, arrays → lists (a matrix: nested lists). A tag's column type is set
by its first good value; a later value of another type, a value with a Bad status and a
type without a column type (structures) are null, and the stream is marked. Nothing is
converted to fit.

**Gaps.** asyncua reconnects a lost session (ActivateSession on a new channel,
TransferSubscriptions, Republish of the messages not acknowledged). When it had to
create a subscription again (the server lost it), or a stream starts from its state,
the values of historizing tags (Historizing attribute true) changed since each tag's
last source timestamp sent are read with HistoryRead (Part 11, ReadRawModifiedDetails)
and sent first, in source-time order, with ``backfill`` true; the live changes held
meanwhile follow, less those already read (``history_backfill``, on by default; see
:mod:`connectors._opcua_history`). Tags that do not historize lose their changes of the
gap, with a warning marker.

**State.** Poll mode: with ``on_change``, the last values sent (an unchanged first poll
is not sent again). Subscribe mode: each tag's last source timestamp sent, where a
backfill starts and by which an initial notification carrying the same sample is not
sent again. Changes received but not yet handed to the dataflow when factoryflow stops
(less than one ``poll_interval``) are backfilled at the next start for historizing tags.
"""

from __future__ import annotations

import math
import re
import sys
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NamedTuple

import msgspec

from connectors._opcua import EngineSlot
from connectors.receivers._opcua_reader import OpcUaReader
from dataflows.sdk import (
    JsonPath,
    NonEmptyStr,
    NonNegativeInt,
    ReceiverConfig,
    RunContext,
    StreamConfig,
    Template,
    Violation,
    describe,
    error,
    receivers,
    warning,
)

if TYPE_CHECKING:  # asyncua loads when a stream runs, not when the config does
    from asyncua import ua


MODES = ("poll", "subscribe")
SECURITY_MODES = ("None", "Sign", "SignAndEncrypt")
DEADBANDS = ("None", "Absolute", "Percent")  # OPC UA Part 8 DeadbandType
MIN_QUEUE = 10  # the default monitored item queue at least
SECURITY_POLICIES = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
_NODE_ID = re.compile(r"^(ns=\d+;)?(i|s|g|b)=", re.IGNORECASE)


_Seconds = Annotated[float, msgspec.Meta(ge=0)]
_PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
_Positive = Annotated[int, msgspec.Meta(ge=1)]


# --------------------------------------------------------------------------- config


class OpcUaConnection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An OPC UA server endpoint, and how to open a session on it."""

    host: Annotated[str | None, describe("Hostname or IP address of the server.")] = None
    port: Annotated[int, describe("TCP port.", ge=1, le=65535)] = 4840
    endpoint: Annotated[str | None, describe(
        "Endpoint URL, e.g. 'opc.tcp://plc.plant.local:4840/server' (instead of host and port).")] = None
    timeout: Annotated[float, describe("Seconds to wait for an answer to each request.", gt=0)] = 4.0
    connection_name: Annotated[str | None, describe("Name streams use to pick this connection.")] = None
    security_mode: Annotated[str, describe("Message security of the secure channel.",
                                           choices=SECURITY_MODES)] = "None"
    security_policy: Annotated[str | None, describe(
        "Security policy when security_mode is Sign or SignAndEncrypt (default Basic256Sha256).",
        choices=SECURITY_POLICIES)] = None
    username: Annotated[str | None, describe("User name of the session (anonymous when unset).")] = None
    password: Annotated[str | None, describe("Password of the user.", secret=True)] = None
    certificate: Annotated[str | None, describe(
        "Path of the client's application instance certificate (PEM or DER); a self-signed one is "
        "made under the receiver's data directory when unset.")] = None
    private_key: Annotated[str | None, describe("Path of the certificate's private key (PEM or DER).")] = None
    server_certificate: Annotated[str | None, describe(
        "Path of the server's certificate to trust (PEM or DER); when unset, the certificate the "
        "server's endpoint presents is used.")] = None
    watchdog_interval: Annotated[float, describe(
        "Seconds between the keep-alive probes (a read of the server's state) that detect a dead "
        "connection.", gt=0)] = 5.0

    @property
    def url(self) -> str:
        """The endpoint URL: ``endpoint``, else ``opc.tcp://host:port``."""
        return self.endpoint or f"opc.tcp://{self.host}:{self.port}"


class OpcUaTag(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One node to read."""

    name: Annotated[NonEmptyStr, describe(
        "The node: a string identifier (e.g. 'Spraypaint.Drying.Fan.Speed') in namespace_index, a "
        "NodeId ('ns=2;s=Line1.Temp', 'ns=3;i=1001') or a browse path ('/Objects/2:Line1/2:Temp').")]
    exportname: Annotated[NonEmptyStr, describe("Output field name.")]
    namespace_index: Annotated[NonNegativeInt | None, describe(
        "Namespace index of a string identifier; when unset, the first namespace (from 1) holding "
        "a node with that identifier.")] = None
    sampling_interval: Annotated[_Seconds | None, describe(
        "Subscribe: this tag's sampling interval in seconds (default: the receiver's).")] = None
    queue_size: Annotated[_Positive | None, describe(
        "Subscribe: this tag's monitored item queue (default: the receiver's).")] = None
    deadband_type: Annotated[str | None, describe(
        "Subscribe: this tag's deadband (default: the receiver's).", choices=DEADBANDS)] = None
    deadband_value: Annotated[_Seconds | None, describe(
        "Subscribe: this tag's deadband value (default: the receiver's).")] = None

    @property
    def form(self) -> str:
        """What ``name`` is: ``"node_id"``, ``"browse_path"`` or ``"string"`` (an identifier)."""
        name = self.name.strip()
        return "node_id" if _NODE_ID.match(name) else "browse_path" if name.startswith("/") else "string"

    def node_id(self) -> ua.NodeId | None:
        """The NodeId the tag names without asking the server (a NodeId, or a string
        identifier with its ``namespace_index``); None for a browse path or a namespace search."""
        from asyncua import ua

        if self.form == "node_id":
            return ua.NodeId.from_string(self.name.strip())
        if self.form == "string" and self.namespace_index is not None:
            return ua.NodeId(self.name.strip(), self.namespace_index)
        return None


class OpcUaStream(StreamConfig, kw_only=True):
    """Tags read together as one stream."""

    opcua_tags: Annotated[list[OpcUaTag], describe("Nodes of the stream.", min_length=1)]
    connection_name: Annotated[str | None, describe("Connection to use; the first by default.")] = None
    publishing_interval: Annotated[_PositiveSeconds | None, describe(
        "Subscribe: this stream's publishing interval in seconds (default: the receiver's).")] = None


@receivers.register
class OpcUaReceiver(ReceiverConfig[OpcUaStream, EngineSlot], tag="opcua", kw_only=True):
    """Reads tags from OPC UA servers by polling (Read) or subscriptions."""

    title: ClassVar[str] = "OPC UA"
    template: ClassVar[Template] = Template(
        "OPCUA", "A template for collecting data from an OPC UA server", {
            "data_receiver_name": "receiver_0", "protocol": "opcua", "poll_interval": 4,
            "connections": [{"host": "<Please input the hostname or IP address (e.g. 127.0.0.1)>",
                             "port": 49320, "timeout": 3}],
            "streams": [
                {"asset": "asset_1", "stream_type": "cycle",
                 "opcua_tags": [{"name": "Spraypaint.Drying.Fan.Speed", "exportname": "Spraypaint1"}]},
                {"asset": "asset_2", "stream_type": "cycle",
                 "opcua_tags": [{"name": "Blister.Pack.Packaging", "exportname": "BlisterPack1"}]},
            ]})
    example: ClassVar[dict[str, Any]] = {
        "data_receiver_name": "press_opcua", "protocol": "opcua", "poll_interval": 1,
        "mode": "subscribe", "sampling_interval": 0.1, "publishing_interval": 1,
        "connections": [{"host": "kepware.plant.local", "port": 49320, "timeout": 3,
                         "security_mode": "SignAndEncrypt", "security_policy": "Basic256Sha256",
                         "username": "collector", "password": "${OPCUA_PASSWORD}"}],
        "streams": [{"asset": "press_1", "stream_type": "cycle", "opcua_tags": [
            {"name": "Press1.Cycle.Count", "exportname": "cycle_count", "namespace_index": 2},
            {"name": "ns=2;s=Press1.Hydraulics.Pressure", "exportname": "pressure"}]}]}

    connections: Annotated[list[OpcUaConnection], describe("Servers.", min_length=1)]
    streams: Annotated[list[OpcUaStream], describe("Streams.", min_length=1)]
    mode: Annotated[str, describe(
        "'poll': one Read of every tag per poll_interval; 'subscribe': monitored items, one record "
        "per data change.", choices=MODES)] = "poll"
    sampling_interval: Annotated[_Seconds | None, describe(
        "Subscribe: seconds between the server's samples of each tag, 0 for as fast as it can "
        "(default: the publishing interval).")] = None
    publishing_interval: Annotated[_PositiveSeconds | None, describe(
        "Subscribe: seconds between the server's notification messages (default: poll_interval).")] = None
    queue_size: Annotated[_Positive | None, describe(
        "Subscribe: changes the server keeps per tag between two notification messages (default: "
        "enough for every sample of a publishing interval, at least 10).")] = None
    discard_oldest: Annotated[bool, describe(
        "Subscribe: a full monitored item queue drops its oldest change (else the newest).")] = True
    deadband_type: Annotated[str, describe(
        "Subscribe: report a change only when it moves by deadband_value ('Absolute', in the value's "
        "units) or by deadband_value percent of the EURange ('Percent'); 'None' reports every change.",
        choices=DEADBANDS)] = "None"
    deadband_value: Annotated[_Seconds, describe("Subscribe: the deadband (see deadband_type).")] = 0.0
    on_change: Annotated[bool, describe(
        "Poll: send a record only when a value or status changed since the last one.")] = False
    history_backfill: Annotated[bool, describe(
        "After a gap (subscribe: a subscription created again; poll: polls missed while the "
        "connection was down; both: factoryflow started from its state), read what historizing tags "
        "changed meanwhile from the server's history (HistoryRead) and send it first, marked "
        "backfill=true.")] = True
    retry_interval: Annotated[_PositiveSeconds | None, describe(
        "Seconds before a stream looks again at a connection that is down, doubled per look up "
        "to 5 s (default: poll_interval); reconnecting itself is the session's, 1 s doubling.")] = None

    def violations(self, path: JsonPath) -> list[Violation]:
        out: list[Violation] = []
        names = {c.connection_name for c in self.connections}
        for index, conn in enumerate(self.connections):
            c_path = [*path, "connections", index]
            if (conn.host is None) == (conn.endpoint is None):
                out.append(error("give either host (and port) or endpoint", c_path))
            if conn.endpoint is not None and not conn.endpoint.startswith("opc.tcp://"):
                out.append(error(f"endpoint {conn.endpoint!r} is not an opc.tcp:// URL",
                                 [*c_path, "endpoint"]))
            secure = conn.security_mode != "None"
            if not secure and conn.security_policy is not None:
                out.append(error("security_policy needs security_mode Sign or SignAndEncrypt",
                                 [*c_path, "security_policy"]))
            if (conn.certificate is None) != (conn.private_key is None):
                out.append(error("certificate and private_key go together", c_path))
            if not secure and any(v is not None for v in (conn.certificate, conn.server_certificate)):
                out.append(warning("certificates are not used with security_mode None", c_path))
            if conn.password is not None and conn.username is None:
                out.append(error("password without username", [*c_path, "password"]))
            if conn.username is not None and not secure:
                out.append(warning("the password crosses the network with security_mode None "
                                   "(encrypted only under the server's user token policy)", c_path))
        exports_seen: dict[str, int] = {}
        for s_index, stream in enumerate(self.streams):
            s_path = [*path, "streams", s_index]
            if stream.connection_name is not None and stream.connection_name not in names:
                out.append(error(f"no connection named {stream.connection_name!r}",
                                 [*s_path, "connection_name"]))
            exports_seen.clear()
            for t_index, tag in enumerate(stream.opcua_tags):
                t_path = [*s_path, "opcua_tags", t_index]
                if tag.exportname in exports_seen:
                    out.append(error(f"exportname {tag.exportname!r} is also tag "
                                     f"{exports_seen[tag.exportname]}'s", [*t_path, "exportname"]))
                exports_seen[tag.exportname] = t_index
                if tag.exportname in RECORD_FIELDS and self.mode == "subscribe":
                    out.append(error(f"exportname {tag.exportname!r} is a field of every "
                                     "subscription record", [*t_path, "exportname"]))
                if tag.namespace_index is not None and tag.form != "string":
                    out.append(warning("namespace_index is ignored: the name is a NodeId or a browse path",
                                       [*t_path, "namespace_index"]))
        if self.mode == "poll":
            for key in ("sampling_interval", "publishing_interval", "queue_size"):
                if getattr(self, key) is not None:
                    out.append(warning(f"{key} applies to mode subscribe only", [*path, key]))
            if self.deadband_type != "None":
                out.append(warning("deadband_type applies to mode subscribe only", [*path, "deadband_type"]))
        elif self.on_change:
            out.append(warning("on_change applies to mode poll (a subscription sends changes only)",
                               [*path, "on_change"]))
        return out

    def connection_for(self, stream: OpcUaStream) -> int:
        """The index of the connection ``stream`` reads from."""
        for index, conn in enumerate(self.connections):
            if stream.connection_name is not None and conn.connection_name == stream.connection_name:
                return index
        return 0

    @property
    def retry_seconds(self) -> float:
        """The first wait of a stream whose connection is down (default: ``poll_interval``)."""
        return self.poll_interval if self.retry_interval is None else self.retry_interval

    @property
    def publishing_seconds(self) -> float:
        """The publishing interval in seconds (default: ``poll_interval``)."""
        return self.publishing_interval or self.poll_interval

    @property
    def sampling_seconds(self) -> float:
        """The sampling interval in seconds (default: the publishing interval)."""
        return self.publishing_seconds if self.sampling_interval is None else self.sampling_interval

    def publishing_of(self, stream: OpcUaStream) -> float:
        """``stream``'s publishing interval in seconds."""
        return stream.publishing_interval or self.publishing_seconds

    def monitoring_of(self, stream: OpcUaStream, tag: OpcUaTag) -> Monitoring:
        """How ``tag``'s monitored item samples, queues and filters (a tag's keys over the
        receiver's; the queue defaults to the samples of a publishing interval, at least
        :data:`MIN_QUEUE`, so a short network cut loses nothing)."""
        sampling = self.sampling_seconds if tag.sampling_interval is None else tag.sampling_interval
        if stream.publishing_interval is not None and self.sampling_interval is None and tag.sampling_interval is None:
            sampling = stream.publishing_interval
        queue = tag.queue_size or self.queue_size or max(
            MIN_QUEUE, math.ceil(self.publishing_of(stream) / max(sampling, 0.001)))
        return Monitoring(sampling, queue, self.discard_oldest, tag.deadband_type or self.deadband_type,
                          self.deadband_value if tag.deadband_value is None else tag.deadband_value)

    def open_worker(self, ctx: RunContext) -> EngineSlot:
        return EngineSlot(self, ctx)

    def open_stream(self, stream: OpcUaStream, resume_state: Any, ctx: RunContext,
                    worker: EngineSlot) -> OpcUaReader:
        return OpcUaReader(self, stream, worker.engine(), ctx, resume_state)


#: The fields of every subscription record beside its tags' columns (no tag may be exported as one).
RECORD_FIELDS = ("timestamp", "server_timestamp", "status_code", "backfill")


class Monitoring(NamedTuple):
    """One monitored item's parameters (OPC UA Part 4 §7.21 MonitoringParameters)."""

    sampling: float  # seconds
    queue: int
    discard_oldest: bool
    deadband_type: str  # DEADBANDS
    deadband_value: float


if __name__ == "__main__":  # python -m connectors.receivers.opcua browse ... (docs/opcua.md)
    from connectors._opcua_browse import main

    sys.exit(main())
