"""scripts/packages.sh: an install waits for the package lock another package manager
holds (apt-get, dpkg, unattended-upgrades), saying so, instead of failing at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import fcntl, sys, time
handle = open("/var/lib/dpkg/lock-frontend", "a")
fcntl.lockf(handle, fcntl.LOCK_EX)  # as apt-get takes it
print("held", flush=True)
time.sleep(float(sys.argv[1]))
"""


def _hold_lock(seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _wait(limit: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f". scripts/packages.sh; PACKAGE_LOCK_SECONDS={limit}; "
                                         "wait_for_package_lock"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_an_install_waits_for_the_package_lock_and_says_so() -> None:
    holder = _hold_lock(3)
    started = time.monotonic()
    done = _wait(30)
    waited = time.monotonic() - started
    holder.wait(10)
    assert done.returncode == 0, done.stderr
    assert 2 <= waited < 10
    lines = done.stderr.splitlines()
    assert lines[0] == ("setup.sh: another package manager (apt-get, dpkg, unattended-upgrades) holds the "
                        "package lock: waiting up to 30 s")
    assert lines[-1].startswith("setup.sh: the package lock is free after ")


def test_a_lock_held_too_long_fails_with_a_line_saying_what_to_do() -> None:
    holder = _hold_lock(10)
    try:
        done = _wait(1)
    finally:
        holder.kill()
        holder.wait(10)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == ("setup.sh: the package lock is still held after 1 s; run setup "
                                            "again once the other package manager is done")


def test_a_free_lock_is_not_waited_for() -> None:
    done = _wait(30)
    assert done.returncode == 0 and done.stderr == ""
