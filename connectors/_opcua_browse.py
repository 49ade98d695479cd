"""``python -m connectors.receivers.opcua browse opc.tcp://host:port``: the opcua
receiver's command-line tool, printing a server's address space so a user can write
``opcua_tags`` (``docs/opcua.md``).

Implements OPC UA Part 4's Browse service as a walk over asyncua's node API.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connectors._opcua_errors import certificate_uri, explain

__all__ = ["browse", "main"]


async def browse(url: str, *, depth: int = 3, root: str | None = None, username: str | None = None,
                 password: str | None = None, security: str | None = None, timeout: float = 4.0,
                 out: Any = None) -> int:
    """Print the address space under ``root`` (default: the Objects folder, without the
    Server object) to ``depth`` levels: one line per node, indented by level, with its
    NodeId, browse name, node class and, for variables, data type. Returns the number of
    nodes printed. ``security`` is ``policy,mode,certificate,private_key[,server_certificate]``,
    e.g. ``Basic256Sha256,SignAndEncrypt,cert.der,key.pem`` (the receiver's self-signed pair is
    in ``$FACTORYFLOW_HOME/components/<data_receiver_name>/pki/``).

    :raises OSError: the server cannot be reached.
    :raises asyncua.ua.UaStatusCodeError: the server refused the session or a request.
    """
    from asyncua import Client, ua

    out = out or sys.stdout
    client = Client(url, timeout=timeout)
    if username:
        client.set_user(username)
        if password:
            client.set_password(password)
    if security:
        policy, _, rest = security.partition(",")
        certificate = rest.split(",")[1] if rest.count(",") >= 1 else None
        uri = certificate_uri(Path(certificate)) if certificate else None
        if uri is not None:
            client.application_uri = uri
        await client.set_security_string(f"{policy.replace('_', '')},{rest}")
    printed = 0
    type_names: dict[str, str] = {}
    async with client:
        start = client.get_node(root) if root else client.nodes.objects
        skip = set() if root else {ua.NodeId(ua.ObjectIds.Server)}
        print(f"{'NodeId':<48} {'BrowseName':<36} {'NodeClass':<10} DataType", file=out)

        async def walk(node: Any, level: int) -> None:
            nonlocal printed
            for child in await node.get_children():
                if child.nodeid in skip:
                    continue
                name = (await child.read_browse_name()).to_string()
                node_class = await child.read_node_class()
                data_type = ""
                if node_class == ua.NodeClass.Variable:
                    type_id = await child.read_data_type()
                    key = type_id.to_string()
                    if key not in type_names:
                        type_names[key] = (await client.get_node(type_id).read_browse_name()).Name
                    data_type = type_names[key]
                    rank = await child.read_value_rank()
                    data_type += "[]" * max(rank, 0) if rank > 0 else ""
                print(f"{'  ' * level + child.nodeid.to_string():<48} {name:<36} {node_class.name:<10} "
                      f"{data_type}".rstrip(), file=out)
                printed += 1
                if level + 1 < depth and node_class in (ua.NodeClass.Object, ua.NodeClass.View):
                    await walk(child, level + 1)

        await walk(start, 0)
    return printed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m connectors.receivers.opcua browse opc.tcp://host:port [--depth N] [--root NodeId]
    [--username U --password P] [--security policy,mode,cert,key[,server_cert]]``:
    prints the address space so a user can write ``opcua_tags``. Exit status 0, or 1 with
    the reason when the server cannot be browsed."""
    parser = argparse.ArgumentParser(prog="python -m connectors.receivers.opcua",
                                     description="Tools for the opcua receiver.")
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("browse", help="print the address space as NodeIds, browse names and data types")
    b.add_argument("url", help="endpoint URL, e.g. opc.tcp://127.0.0.1:4840")
    b.add_argument("--depth", type=int, default=3, help="levels below the root (default 3)")
    b.add_argument("--root", help="NodeId to start from (default: the Objects folder)")
    b.add_argument("--username")
    b.add_argument("--password")
    b.add_argument("--security", help="policy,mode,certificate,private_key[,server_certificate], e.g. "
                                      "Basic256Sha256,SignAndEncrypt,cert.der,key.pem")
    b.add_argument("--timeout", type=float, default=4.0, help="seconds per request (default 4)")
    args = parser.parse_args(argv)
    try:
        count = asyncio.run(browse(args.url, depth=args.depth, root=args.root, username=args.username,
                                   password=args.password, security=args.security, timeout=args.timeout))
    except Exception as exc:  # noqa: BLE001 - a command-line tool: say why and exit 1
        print(f"browse {args.url}: {explain(exc)}", file=sys.stderr)
        return 1
    print(f"{count} nodes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
