"""``python -m dataflows``: run the main job, or validate a config.

``run`` initialises the recovery directory on first use, then runs the main job with
bytewax's own runner (``bytewax.run.cli_main``), with recovery on, so every stream
resumes from its last snapshot. It refuses to start over silently: an installation that
delivered records before and whose recovery state is gone exits 2 with one line, unless
``--fresh-state`` says to read every source from the start again
(:mod:`dataflows.recovery`). Ctrl-C or SIGTERM stops it gracefully: one line logs the
records delivered per stream and the exit status is 0.

``run --addresses 'h0:p0;h1:p1' --process-id I`` runs process ``I`` of a bytewax cluster
(bytewax's ``-a`` and ``-i``), each process with its own home; its recovery directory holds
partition ``I`` of as many as there are processes (:func:`dataflows.home.init_recovery`).

Before a start every state file is checked (:mod:`dataflows.integrity`): a damaged ledger
or control store is rebuilt; any other damaged file stops the start with one line naming
it and ``set-aside FILE``, the command that moves it aside.

``validate FILE`` prints every violation of a config, ``json_path`` first, and exits 0
(warnings at most) or 2 (errors). The ``factoryflow`` command adds ``api``.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

from dataflows.config import ConfigError, read_document, validate
from dataflows.context import CLUSTER_PROCESS_ENV
from dataflows.home import home_dir, recovery_dir
from dataflows.secrets import scrub, secret_values


def run(args: argparse.Namespace) -> int:
    """Run the main job in this process until it is stopped; returns the exit status."""
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from dataflows.main import flow  # logging and signal handlers: only for the job
    from dataflows.recovery import preflight, prepare_recovery

    if args.home:
        os.environ["FACTORYFLOW_HOME"] = str(args.home.resolve())
    if args.config:
        os.environ["FACTORYFLOW_CONFIG"] = str(args.config.resolve())
    home = home_dir()
    recovery = recovery_dir(home)
    addresses = [a.strip() for a in (args.addresses or "").split(";") if a.strip()] or None
    process_id, processes = args.process_id, len(addresses or [""])
    if process_id is None or not 0 <= process_id < processes:
        given = os.environ.get("FACTORYFLOW_PROCESS_ID") if process_id is None else process_id
        print(f"factoryflow: process id {given!r} is not one of the cluster's {processes} processes (0 to "
              f"{processes - 1}): give --process-id (FACTORYFLOW_PROCESS_ID) and --addresses "
              "(FACTORYFLOW_ADDRESSES)", file=sys.stderr)
        return 2
    cluster = {"partition": process_id, "partitions": processes} if addresses else {}
    if addresses:  # the job and its forwarders: each process of the cluster has its own home
        os.environ[CLUSTER_PROCESS_ENV] = str(process_id)
    checked = preflight(home, recovery, fresh_state=args.fresh_state, **cluster)
    for line in checked.rebuilt:
        print(f"factoryflow: warning: {line}", file=sys.stderr)
    for line in checked.refused:  # one line each, before the job's logging and its summary line
        print(f"factoryflow: {line}", file=sys.stderr)
    if checked.refused:
        return 2
    dataflow = flow(recovery)  # exits 2 with every violation when the config is invalid
    prepare_recovery(home, recovery, fresh_state=args.fresh_state, **cluster)
    try:
        cli_main(dataflow, workers_per_process=args.workers, process_id=process_id if addresses else None,
                 addresses=addresses, epoch_interval=timedelta(seconds=args.snapshot_interval),
                 recovery_config=RecoveryConfig(str(recovery), backup_interval=timedelta(0)))
    except BaseException as exc:  # bytewax's PanicException is a BaseException
        if not addresses or type(exc).__name__ != "PanicException":
            raise
        print(f"factoryflow: process {process_id} of the cluster {';'.join(addresses)} stopped: another process "
              f"stopped or cannot be reached (bytewax: {exc}). Start every process of the cluster again: each "
              "resumes from the last snapshot", file=sys.stderr)
        return 1
    return 0


def set_aside(args: argparse.Namespace) -> int:
    """Move a damaged state file aside (``<file>.damaged-<UTC time>``), saying what follows."""
    from dataflows.integrity import set_aside as move

    try:
        target = move(args.file)
    except FileNotFoundError:
        print(f"factoryflow: {args.file} does not exist", file=sys.stderr)
        return 2
    print(f"{args.file} moved aside to {target}; the next start makes a new one")
    return 0


def counted(count: int, noun: str) -> str:
    """``"1 error"``, ``"2 errors"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def check(args: argparse.Namespace) -> int:
    """Print every violation of the config file; 2 when any is an error."""
    try:
        document = read_document(args.file)
    except ConfigError as exc:
        for violation in exc.violations:
            print(f"error: {violation}")
        return 2
    violations = validate(document, runnable=args.runnable)
    secrets = secret_values(document)
    for v in violations:
        print(scrub(f"{v.level}: {v}", secrets))
    errors = sum(v.level == "error" for v in violations)
    print(f"{args.file}: {counted(errors, 'error')}, {counted(len(violations) - errors, 'warning')}")
    return 2 if errors else 0


def _process_id(text: str) -> int | None:
    """A process id as given (a number from 0), or None when it is not one."""
    return int(text) if text.strip().isdigit() else None


def parser(prog: str = "python -m dataflows",
           more: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The command line of ``run`` and ``validate``; ``more`` lists further commands (name:
    help) a caller handles itself (``factoryflow`` adds ``api``)."""
    top = argparse.ArgumentParser(prog=prog, description="factoryflow: a FactoryTX-compatible collector")
    commands = top.add_subparsers(dest="command", required=True)
    for name, text in (more or {}).items():
        commands.add_parser(name, help=text, add_help=False)
    job = commands.add_parser("run", help="run the main job (recovery on; Ctrl-C stops it)")
    job.add_argument("--home", type=Path, help="installation directory (default $FACTORYFLOW_HOME "
                     "or ./.factoryflow)")
    job.add_argument("--config", type=Path, help="config file (default <home>/conf.d/config.json)")
    job.add_argument("--snapshot-interval", type=float, default=5.0,
                     help="seconds between recovery snapshots (default 5)")
    job.add_argument("--workers", type=int, default=1, help="bytewax workers in this process")
    job.add_argument("--addresses", default=os.environ.get("FACTORYFLOW_ADDRESSES"),
                     help="the processes of a bytewax cluster, 'host:port;host:port' (bytewax's -a; also "
                          "FACTORYFLOW_ADDRESSES): each process has its own home and holds its own recovery "
                          "partition")
    job.add_argument("--process-id", type=_process_id, default=_process_id(os.environ.get("FACTORYFLOW_PROCESS_ID", "0")),
                     help="this process's place in --addresses, from 0 (bytewax's -i; also FACTORYFLOW_PROCESS_ID, "
                          "e.g. a StatefulSet pod's index)")
    job.add_argument("--fresh-state", action="store_true",
                     help="start over although records were delivered before and the recovery state is "
                          "gone: every source is read from the start again (also FACTORYFLOW_FRESH_STATE=1)")
    job.set_defaults(handler=run)
    aside = commands.add_parser("set-aside", help="move a damaged state file aside (the job names it "
                                "and says what this costs)")
    aside.add_argument("file", type=Path)
    aside.set_defaults(handler=set_aside)
    lint = commands.add_parser("validate", help="print every violation of a config file")
    lint.add_argument("file", type=Path)
    lint.add_argument("--runnable", action="store_true",
                      help="also report what stops the main job (placeholders, validated-only components)")
    lint.set_defaults(handler=check)
    return top


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; returns the exit status."""
    args = parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
