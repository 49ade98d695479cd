"""Each state file, damaged in each of three ways (truncated, header garbled, pages
garbled), is found before a start (issue 25, item 2): the ledger and the control store are
moved aside and made anew; a recovery partition, an outbox, a spool and an MQTT buffer are
named in one line with the command that moves them aside."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dataflows.control import ControlStore, control_path
from dataflows.home import init_recovery
from dataflows.integrity import check_state
from dataflows.ledger import Ledger, ledger_path
from dataflows.outbox import Outbox


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def header_garbled(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:16] = b"\xff" * 16
    path.write_bytes(bytes(data))


def pages_garbled(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4096:8192] = b"\xa5" * 4096
    path.write_bytes(bytes(data))


def installation(home: Path) -> dict[str, Path]:
    """A home with each kind of state file, sound and checkpointed (no log beside it)."""
    ledger = Ledger(ledger_path(home))
    for n in range(300):  # pages enough for a garbled second page to matter
        ledger.record_received("files", f"asset{n}:csv", n)
    ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ledger.close()
    control = ControlStore(control_path(home))
    control.close()
    recovery = init_recovery(home / "recovery")
    files = {"ledger": ledger_path(home), "control": control_path(home),
             "recovery": next(recovery.glob("part-*.sqlite3"))}
    for component, name in (("sight_machine", "outbox.sqlite"), ("kafka", "spool.sqlite"),
                            ("broker", "messages.sqlite")):
        path = home / "components" / component / name
        path.parent.mkdir(parents=True)
        if name == "messages.sqlite":
            import sqlite3

            db = sqlite3.connect(path)
            db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body BLOB)")
            db.executemany("INSERT INTO messages (body) VALUES (?)", [(b"x" * 100,)] * 300)
            db.commit()
            db.close()
        else:
            outbox = Outbox(path)
            outbox.append([("line:csv", None, b"x" * 100)] * 300)
            outbox._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            outbox.close()
        files[component] = path
    return files


@pytest.mark.parametrize("damage", [truncated, header_garbled, pages_garbled])
@pytest.mark.parametrize("which", ["ledger", "control", "recovery", "sight_machine", "kafka", "broker"])
def test_each_damaged_state_file_is_found(tmp_path: Path, which: str, damage: Callable[[Path], None]) -> None:
    home = tmp_path / "home"
    files = installation(home)
    assert check_state(home, home / "recovery").refused == []  # sound
    damage(files[which])
    checked = check_state(home, home / "recovery")
    if which in ("ledger", "control"):
        (line,) = checked.rebuilt
        assert checked.refused == []
        assert line.startswith(f"{files[which]} was damaged (") and "moved aside to" in line
        assert check_state(home, home / "recovery").rebuilt == []  # made anew
    else:
        (line,) = checked.refused
        assert line.startswith(f"{files[which]} is damaged (")
        assert f"`factoryflow set-aside {files[which]}` moves it aside" in line
