"""Config spec of the ``opcua`` receiver (validated, not yet runnable in this version).

Connection keys ``host``, ``port``, ``timeout`` (seconds); streams list ``opcua_tags``
``[{name, exportname, namespace_index}]`` where ``exportname`` is the output field name.
Implements the config of the OPCUA template in ``shared/specs/factorytx-rest-api.txt``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from dataflows.registry import receivers
from dataflows.sdk import NonNegativeInt, ReceiverConfig, StreamConfig, Template, describe


class OpcUaConnection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An OPC UA server endpoint."""

    host: Annotated[str, describe("Hostname or IP address of the server.")]
    port: Annotated[int, describe("TCP port.", ge=1, le=65535)] = 4840
    timeout: Annotated[float, describe("Request timeout in seconds.", gt=0)] = 4.0
    connection_name: Annotated[str | None, describe("Name of the connection.")] = None


class OpcUaTag(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One node to read."""

    name: Annotated[str, describe("Node name, e.g. 'Spraypaint.Drying.Fan.Speed'.")]
    exportname: Annotated[str, describe("Output field name.")]
    namespace_index: Annotated[NonNegativeInt | None, describe("Namespace index of the node.")] = None


class OpcUaStream(StreamConfig, kw_only=True):
    """Tags read together as one stream."""

    opcua_tags: Annotated[list[OpcUaTag], describe("Nodes of the stream.", min_length=1)]


@receivers.register
class OpcUaReceiver(ReceiverConfig, tag="opcua", kw_only=True):
    """Reads tags from an OPC UA server (config only in this version)."""

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
        "connections": [{"host": "kepware.plant.local", "port": 49320, "timeout": 3}],
        "streams": [{"asset": "press_1", "stream_type": "cycle", "opcua_tags": [
            {"name": "Press1.Cycle.Count", "exportname": "cycle_count", "namespace_index": 2}]}]}

    runnable: ClassVar[bool] = False
    connections: Annotated[list[OpcUaConnection], describe("Servers.", min_length=1)]
    streams: Annotated[list[OpcUaStream], describe("Streams.", min_length=1)]
