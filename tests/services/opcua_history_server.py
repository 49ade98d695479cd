"""asyncua's server as its own process, with history: the OPC UA gap tests SIGKILL it.

    python tests/services/opcua_history_server.py --port P --db history.sqlite [--tags 50] [--period 0.1]

Folder ``Plant`` (``ns=2``) holds ``--tags`` Double variables ``ns=2;i=<1000 + i>`` (``Tag<i>``),
each historizing into the SQLite file ``--db`` (asyncua's ``HistorySQLite``: one commit
per value, so what the server historized survives a SIGKILL). Every ``--period`` seconds
each takes the tick count (seconds since the epoch over the period, rounded down) with
that tick's time (plus 50 µs) as its source timestamp. Listens on 127.0.0.1 only; prints ``ready``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta


async def main() -> None:
    from asyncua import Server, ua
    from asyncua.server.history_sql import HistorySQLite

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--period", type=float, default=0.1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/")
    server.set_server_name("factoryflow history test server")
    server.iserver.history_manager.set_storage(HistorySQLite(args.db))
    await server.iserver.history_manager.init()  # opens the file (server.init opened the default)
    ns = await server.register_namespace("urn:factoryflow:test:history")
    plant = await server.nodes.objects.add_folder(ua.NodeId("Plant", ns), ua.QualifiedName("Plant", ns))
    nodes = [await plant.add_variable(ua.NodeId(1000 + i, ns), ua.QualifiedName(f"Tag{i}", ns),
                                      ua.Variant(0.0, ua.VariantType.Double)) for i in range(args.tags)]
    async with server:
        await server.historize_node_data_change(nodes, period=None)
        print("ready", flush=True)
        while True:
            await asyncio.sleep(args.period - time.time() % args.period)
            tick = int(time.time() / args.period + 1e-6)
            # 50 µs past the tick: asyncua's HistorySQLite cannot read back a timestamp
            # without a fraction of a second (Python's sqlite3 timestamp converter fails)
            stamp = datetime.fromtimestamp(tick * args.period, UTC) + timedelta(microseconds=50)
            value = ua.DataValue(ua.Variant(float(tick), ua.VariantType.Double), SourceTimestamp=stamp,
                                 ServerTimestamp=datetime.now(UTC))
            for node in nodes:
                await server.write_attribute_value(node.nodeid, value)


if __name__ == "__main__":
    asyncio.run(main())
