"""The ``factoryflow`` command: ``run`` and ``validate`` (as ``python -m dataflows``) and
``api`` (as ``python -m api``).

    factoryflow run [--home DIR]          the main job, recovery initialised on first use
    factoryflow validate config.json      every violation, with its json_path
    factoryflow api [--port 8090]         the control API, supervising the main job
"""

from __future__ import annotations

import sys

from dataflows.__main__ import parser as job_parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["api"]:
        from api.__main__ import main as api_main

        api_main(argv[1:], prog="factoryflow api")
        return 0
    args = job_parser("factoryflow", more={
        "api": "the control API on 127.0.0.1:8090, supervising the main job (factoryflow api -h)"},
    ).parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
