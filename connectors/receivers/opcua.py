"""Config spec of the ``opcua`` receiver (validated, not yet runnable in this version).

Connection keys ``host``, ``port``, ``timeout`` (seconds); streams list ``opcua_tags``
``[{name, exportname, namespace_index}]`` where ``exportname`` is the output field name.
Implements the config of the OPCUA template in ``shared/specs/factorytx-rest-api.txt``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from connectors.registry import receivers
from dataflows.config import NonNegativeInt, ReceiverConfig, StreamConfig, describe


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

    runnable: ClassVar[bool] = False
    connections: Annotated[list[OpcUaConnection], describe("Servers.", min_length=1)]
    streams: Annotated[list[OpcUaStream], describe("Streams.", min_length=1)]
