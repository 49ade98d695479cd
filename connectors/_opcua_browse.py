"""``python -m connectors.receivers.opcua browse opc.tcp://host:port``: the opcua
receiver's command-line tool, printing a server's address space so a user can write
``opcua_tags`` (``docs/opcua.md``).

Implements OPC UA Part 4's Browse, BrowseNext and Read services, a level of the address
space at a time, a thousand nodes per call: a 100,000-node address space takes seconds,
not a request per node.
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
    async with client:
        start = ua.NodeId.from_string(root) if root else ua.NodeId(ua.ObjectIds.ObjectsFolder)
        skip = set() if root else {ua.NodeId(ua.ObjectIds.Server)}
        tree = await _walk(client, start, depth, skip)
        print(f"{'NodeId':<48} {'BrowseName':<36} {'NodeClass':<10} DataType", file=out)
        printed = 0
        stack = [(child, 0) for child in reversed(tree.get(start, []))]
        while stack:  # depth first, in the server's order
            (node_id, name, node_class, data_type), level = stack.pop()
            print(f"{'  ' * level + node_id.to_string():<48} {name:<36} {node_class.name:<10} {data_type}".rstrip(),
                  file=out)
            printed += 1
            stack += [(child, level + 1) for child in reversed(tree.get(node_id, []))]
    return printed


#: Nodes per Browse and Read call, and references per node and Browse answer.
BATCH = 1000


async def _walk(client: Any, start: Any, depth: int, skip: set[Any]) -> dict[Any, list[tuple[Any, str, Any, str]]]:
    """The address space under ``start`` to ``depth`` levels, a level at a time: one Browse
    call (forward hierarchical references; BrowseNext for the rest) and one Read of the
    variables' DataType and ValueRank per :data:`BATCH` nodes. Returns each node's
    children as ``(NodeId, browse name, NodeClass, data type)``."""
    from asyncua import ua

    tree: dict[Any, list[tuple[Any, str, Any, str]]] = {}
    type_names: dict[Any, str] = {}
    level = [start]
    for _ in range(depth):
        found: list[tuple[Any, Any]] = []  # (parent, ReferenceDescription)
        for first in range(0, len(level), BATCH):
            parents = level[first:first + BATCH]
            params = ua.BrowseParameters(RequestedMaxReferencesPerNode=BATCH, NodesToBrowse=[ua.BrowseDescription(
                NodeId=parent, BrowseDirection=ua.BrowseDirection.Forward,
                ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences), IncludeSubtypes=True,
                NodeClassMask=0, ResultMask=ua.BrowseResultMask.All) for parent in parents])
            results = await client.uaclient.browse(params)
            while True:
                more: list[tuple[Any, bytes]] = []
                for parent, result in zip(parents, results, strict=True):
                    result.StatusCode.check()
                    found += [(parent, ref) for ref in result.References or []]
                    if result.ContinuationPoint:
                        more.append((parent, result.ContinuationPoint))
                if not more:
                    break
                parents = [parent for parent, _ in more]
                results = await client.uaclient.browse_next(ua.BrowseNextParameters(
                    ReleaseContinuationPoints=False, ContinuationPoints=[point for _, point in more]))
        found = [(p, r) for p, r in found if getattr(r.NodeId, "ServerIndex", 0) == 0 and _local(r.NodeId) not in skip]
        variables = [_local(r.NodeId) for _, r in found if r.NodeClass == ua.NodeClass.Variable]
        kinds: dict[Any, str] = {}
        for first in range(0, len(variables), BATCH):
            batch = variables[first:first + BATCH]
            params = ua.ReadParameters(NodesToRead=[
                ua.ReadValueId(NodeId=n, AttributeId=a) for n in batch
                for a in (ua.AttributeIds.DataType, ua.AttributeIds.ValueRank)])
            answers = await client.uaclient.read(params)
            for index, node_id in enumerate(batch):
                type_id, rank = answers[2 * index].Value.Value, answers[2 * index + 1].Value.Value
                if type_id is not None and type_id not in type_names:
                    type_names[type_id] = (await client.get_node(type_id).read_browse_name()).Name
                kinds[node_id] = (type_names.get(type_id, "") if type_id is not None else "") + (
                    "[]" * rank if isinstance(rank, int) and rank > 0 else "")
        level = []
        seen = set(tree)
        for parent, ref in found:
            node_id = _local(ref.NodeId)
            tree.setdefault(parent, []).append(
                (node_id, ref.BrowseName.to_string(), ref.NodeClass, kinds.get(node_id, "")))
            if ref.NodeClass in (ua.NodeClass.Object, ua.NodeClass.View) and node_id not in seen:
                seen.add(node_id)
                level.append(node_id)
    return tree


def _local(expanded: Any) -> Any:
    """An ExpandedNodeId of this server as a NodeId (asyncua decodes most as NodeIds)."""
    from asyncua import ua

    if type(expanded) is ua.NodeId:
        return expanded
    return ua.NodeId(expanded.Identifier, expanded.NamespaceIndex, expanded.NodeIdType)


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
