"""The image's HEALTHCHECK: exit 0 when healthy, 1 with one line on stdout when not.

- The container runs ``api``: the control API answers ``GET /v1/status`` with 200 on
  ``127.0.0.1:$FACTORYFLOW_API_PORT`` (8090), with ``X-API-Key`` when
  ``FACTORYFLOW_API_KEY`` is set.
- Otherwise (``run``): the job's process lives and is not a zombie.
"""

import os
import sys
import urllib.request
from pathlib import Path


def command() -> list[str]:
    """The container's command: PID 1 is tini, then the entrypoint, then its arguments."""
    words = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    args = [w.decode(errors="replace") for w in words if w]
    for i, word in enumerate(args):
        if word.endswith("factoryflow-entrypoint"):
            return args[i + 1:]
    return args


def job_alive() -> bool:
    """Whether a ``factoryflow run`` process is running (not a zombie)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if state != "Z" and any(w.endswith(b"factoryflow") for w in cmdline[:2]) and b"run" in cmdline:
            return True
    return False


def main() -> int:
    if command()[:1] == ["api"]:
        port = os.environ.get("FACTORYFLOW_API_PORT", "8090")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/status")
        if os.environ.get("FACTORYFLOW_API_KEY"):
            request.add_header("X-API-Key", os.environ["FACTORYFLOW_API_KEY"])
        try:
            with urllib.request.urlopen(request, timeout=4) as answer:
                if answer.status == 200:
                    return 0
                print(f"the control API answered {answer.status} on port {port}")
        except OSError as exc:
            print(f"the control API does not answer on port {port}: {exc}")
        return 1
    if job_alive():
        return 0
    print("no factoryflow run process is running")
    return 1


if __name__ == "__main__":
    sys.exit(main())
