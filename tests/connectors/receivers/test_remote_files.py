"""The remote file receivers (``s3``, ``azure_data_lake_gen2``, ``azure_data_lake``, ``smb``)
against real servers: S3Proxy, Azurite (HTTP with the account key; HTTPS with a service
principal's OAuth token from the token simulator) and Samba (encryption required).

Each test runs once per protocol, in a folder of its own on the session's server.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dataflows.config import load
from dataflows.ledger import Ledger, ledger_path
from dataflows.records import StreamKey
from dataflows.runtime import RunContext
from dataflows.testing import Clock, StreamDriver
from tests.conftest import CLIENT_ID, CLIENT_SECRET, NAB_ROWS, TENANT_ID
from tests.connectors.conformance import ReceiverHarness, receiver_harness
from tests.flowrun import drain
from tests.nab import nab_lines
from tests.services.process import free_port

STREAM = StreamKey("machine", "temperature")
PROTOCOLS = ["s3", "azure_data_lake_gen2", "azure_data_lake", "smb"]
BUCKET = CONTAINER = "factoryflow"  # one bucket or container per server, a folder per test


@dataclass
class Store:
    """A folder on one protocol's server: ``fs`` (the test's own fsspec client) and ``base``
    (the folder's path on it), the receiver's ``connection`` to it, and ``url`` (how the
    receiver names the folder's files)."""

    protocol: str
    fs: Any
    base: str
    connection: dict[str, Any]
    url: str

    def path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def put(self, name: str, data: bytes) -> None:
        self.fs.pipe(self.path(name), data)

    def exists(self, name: str) -> bool:
        self.fs.invalidate_cache()
        return bool(self.fs.exists(self.path(name)))

    def remove(self, name: str) -> None:
        self.fs.rm_file(self.path(name))

    def key(self, name: str) -> str:
        """The receiver's name of file ``name`` (its batches' ``source``)."""
        return f"{self.url}/{name}"

    def document(self, connection: dict[str, Any] | None = None, **keys: Any) -> dict[str, Any]:
        return {"transforms": [], "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}],
                "data_receiver": [{
                    "data_receiver_name": "files", "protocol": self.protocol, "poll_interval": 1,
                    "connections": [connection or self.connection],
                    "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                    "streams": [{"asset": "machine", "stream_type": "temperature", "file_filter": ["*.csv"],
                                 "parser": "csv"}], **keys}]}


def make_store(protocol: str, request: pytest.FixtureRequest, folder: str | None = None) -> Store:
    """A fresh folder on ``protocol``'s session server."""
    folder = folder or uuid.uuid4().hex[:12]
    if protocol == "s3":
        server = request.getfixturevalue("s3")
        fs = server.filesystem()
        server.create_bucket(BUCKET)
        return Store(protocol, fs, f"{BUCKET}/{folder}", server.connection(BUCKET, data_directory=folder),
                     f"s3://{BUCKET}/{folder}")
    if protocol in ("azure_data_lake_gen2", "azure_data_lake"):
        https = protocol == "azure_data_lake"
        server = request.getfixturevalue("azurite_https" if https else "azurite_http")
        fs = server.filesystem()
        if not fs.exists(CONTAINER):
            fs.mkdir(CONTAINER)
        url = f"az://devstoreaccount1/{CONTAINER}/{folder}"
        if not https:
            return Store(protocol, fs, f"{CONTAINER}/{folder}",
                         {"connection_str": server.connection_string, "storage_container_name": CONTAINER,
                          "data_directory": folder}, url)
        token = request.getfixturevalue("azure_token")
        return Store(protocol, fs, f"{CONTAINER}/{folder}",
                     {"tenant_id": TENANT_ID, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                      "store_name": "devstoreaccount1", "data_directory": f"{CONTAINER}/{folder}",
                      "account_host": server.account_host, "authority_host": token.authority,
                      "connection_name": "Blue"}, url)
    server = request.getfixturevalue("samba")
    import fsspec

    fs = fsspec.filesystem("smb", host="127.0.0.1", port=server.port, username=server.username,
                           password=server.password, skip_instance_cache=True)
    fs.makedirs(f"/data/{folder}", exist_ok=True)
    return Store(protocol, fs, f"/data/{folder}", server.connection(folder),
                 f"smb://127.0.0.1:{server.port}/data/{folder}")


@pytest.fixture(params=PROTOCOLS)
def store(request: pytest.FixtureRequest) -> Store:
    return make_store(request.param, request)


def context(home: Path, clock: Clock | None = None) -> RunContext:
    return RunContext(home=home, now=clock or Clock.ahead(3600),
                      expected_transmits={("files", STREAM): frozenset({"local"})})


def open_reader(store: Store, tmp_path: Path, state: Any = None, clock: Clock | None = None,
                connection: dict[str, Any] | None = None, **keys: Any):
    rec = load(store.document(connection, **keys)).data_receiver[0]
    return rec.open_stream(rec.streams[0], state, context(tmp_path / "home", clock), None)


def values(batches: list[Any]) -> list[list[int]]:
    return [b.frame["v"].to_list() for b in batches]


def test_new_changed_and_appended_files(store: Store, tmp_path: Path) -> None:
    store.put("a.csv", b"ts,v\n1,10\n")
    reader = open_reader(store, tmp_path)
    batches = drain(reader)
    assert values(batches) == [[10]] and [b.source for b in batches] == [store.key("a.csv")]
    assert drain(reader) == []  # an unchanged file is never read again
    store.put("b.csv", b"ts,v\n2,20\n")
    assert values(drain(reader)) == [[20]]
    store.put("a.csv", b"ts,v\n1,99\n")  # rewritten: same size, new content
    assert values(drain(reader)) == [[99]]
    store.put("a.csv", b"ts,v\n1,99\n2,98\n3,97\n")  # appended to
    assert values(drain(reader)) == [[98, 97]]
    state = reader.snapshot()
    assert state["files"][store.key("a.csv")].offset == len(b"ts,v\n1,99\n2,98\n3,97\n")
    restarted = open_reader(store, tmp_path, state=state)
    assert drain(restarted) == []  # resumed from the snapshot: nothing twice
    store.remove("b.csv")
    assert drain(restarted) == []
    assert set(restarted.snapshot()["files"]) == {store.key("a.csv")}  # gone files leave the state


def test_delete_completed_deletes_once_delivered_and_never_an_unread_rest(store: Store, tmp_path: Path) -> None:
    store.put("a.csv", b"ts,v\n1,10\n")
    store.put("b.csv", b"ts,v\n2,20\n")
    reader = open_reader(store, tmp_path, delete_completed=True)
    batches = drain(reader)
    assert sorted(values(batches)) == [[10], [20]]
    assert drain(reader) == [] and store.exists("a.csv")  # not delivered yet: kept, not read again
    ledger = Ledger(ledger_path(tmp_path / "home"))
    by_source = {b.source: b for b in batches}
    ledger.ack("files", str(STREAM), by_source[store.key("a.csv")].ack_key, "local")
    store.put("b.csv", b"ts,v\n2,20\n3,30\n")  # b grows before its delivery is acknowledged
    ledger.ack("files", str(STREAM), by_source[store.key("b.csv")].ack_key, "local")
    assert values(drain(reader)) == [[30]]  # the rest of b is read, not deleted unread
    assert not store.exists("a.csv") and store.exists("b.csv")
    pending = reader.snapshot()["pending_delete"]
    ledger.ack("files", str(STREAM), pending[store.key("b.csv")], "local")
    assert drain(reader) == []
    assert not store.exists("b.csv")
    assert reader.snapshot()["files"] == {} and reader.snapshot()["pending_delete"] == {}


def test_a_file_that_vanishes_between_listing_and_reading_is_skipped(store: Store, tmp_path: Path) -> None:
    rows = range(300)
    store.put("a.csv", b"ts,v\n" + b"".join(b"%d,%d\n" % (i, i) for i in rows))  # 3 chunks of 1 KiB
    store.put("b.csv", b"ts,v\n2,20\n")
    reader = open_reader(store, tmp_path, process_files_alphabetically=True, chunk_bytes=1024)
    first, more = reader.read()  # lists both, reads a's first chunk
    assert more and len(first) == 1 and first[0].source == store.key("a.csv")
    store.remove("b.csv")
    rest = drain(reader)
    assert [v for b in first + rest for v in b.frame["v"].to_list()] == list(rows)
    (warning,) = reader.take_warnings()
    assert store.key("b.csv") in warning and "vanished" in warning
    store.put("b.csv", b"ts,v\n2,20\n")
    assert values(drain(reader)) == [[20]]  # back: read


def test_a_whole_file_parser_waits_until_the_file_is_still(store: Store, tmp_path: Path) -> None:
    clock = Clock(datetime.now(UTC))
    store.put("a.json", b'[{"v": 1}]')
    doc = store.document(parsers=[{"parser_name": "csv", "parser_type": "json"}])
    doc["data_receiver"][0]["streams"][0]["file_filter"] = ["*.json"]
    rec = load(doc).data_receiver[0]
    reader = rec.open_stream(rec.streams[0], None, context(tmp_path / "home", clock), None)
    assert drain(reader) == []  # written just now: it may still be being written
    clock.now += timedelta(seconds=5)
    assert values(drain(reader)) == [[1]]


def _dead(store: Store) -> dict[str, Any]:
    port = free_port()  # nothing listens there
    conn = dict(store.connection)
    if store.protocol == "s3":
        conn["endpoint_url"] = f"http://127.0.0.1:{port}"
    elif store.protocol == "azure_data_lake_gen2":
        conn["connection_str"] = conn["connection_str"].replace(
            conn["connection_str"].split("BlobEndpoint=")[1].split("/devstoreaccount1")[0],
            f"http://127.0.0.1:{port}")
    elif store.protocol == "azure_data_lake":
        conn["account_host"] = f"127.0.0.1:{port}/devstoreaccount1"
    else:
        conn["port"] = port
    return conn


def _bad_credentials(store: Store) -> dict[str, Any]:
    conn = dict(store.connection)
    if store.protocol == "s3":
        conn["secret_access_key"] = "wrong"
    elif store.protocol == "azure_data_lake_gen2":
        conn["connection_str"] = conn["connection_str"].replace("AccountKey=Eby8", "AccountKey=Xby8")
    elif store.protocol == "azure_data_lake":
        conn["client_secret"] = "wrong"
    else:  # smbclient shares one session per server and user in a process: another user
        conn["username"], conn["password"] = "intruder", "wrong"
    return conn


@pytest.mark.parametrize("failure", ["unreachable", "bad credentials"])
def test_failures_mark_the_stream_and_are_retried_with_backoff(store: Store, tmp_path: Path, failure: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    store.put("a.csv", b"ts,v\n1,10\n")
    connection = _dead(store) if failure == "unreachable" else _bad_credentials(store)
    rec = load(store.document(connection)).data_receiver[0]
    clock = Clock.ahead(3600)  # files written now are already still
    ctx = context(tmp_path / "home", clock)
    partition = StreamDriver(rec, ctx)
    with caplog.at_level(logging.ERROR, logger="receiver"):
        assert partition.next_batch() == []
        first = (partition.next_poll - clock.now).total_seconds()
        clock.now = partition.next_poll
        assert partition.next_batch() == []
        second = (partition.next_poll - clock.now).total_seconds()
    assert 1 <= first <= 1.1 and 2 <= second <= 2.2  # poll_interval 1 s, doubled, <= 10 % jitter
    (marker,) = [m for m in Ledger(ledger_path(ctx.home)).markers() if m.component == "files"]
    assert marker.level == "error" and "Reading files failed" in marker.message
    assert "read failed (attempt 1" in caplog.text
    assert "read failed (attempt 2" not in caplog.text  # one line per outage while its cause stays
    partition.close()


def test_azure_data_lake_takes_max_files_per_request_per_poll(request: pytest.FixtureRequest,
                                                             tmp_path: Path) -> None:
    store = make_store("azure_data_lake", request)
    for name in ("a.csv", "b.csv", "c.csv"):
        store.put(name, b"ts,v\n1,10\n")
    reader = open_reader(store, tmp_path, connection={**store.connection, "max_files_per_request": 2})
    assert len(drain(reader)) == 2  # this poll
    assert len(drain(reader)) == 1  # the next
    token = request.getfixturevalue("azure_token")
    assert token.requests >= 1  # signed in as the service principal


def test_smb_session_is_encrypted(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store = make_store("smb", request)
    store.put("a.csv", b"ts,v\n1,10\n")
    reader = open_reader(store, tmp_path)
    assert values(drain(reader)) == [[10]]
    sessions = request.getfixturevalue("samba").sessions()
    assert "AES-" in sessions  # the server requires SMB 3 encryption: sessions carry a cipher


class RemoteFileHarness(ReceiverHarness):
    """CSV files appearing in a folder on the protocol's server, one file per :meth:`add`."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.store = make_store(self.protocol, request)
        self.files = 0

    def receiver(self) -> dict[str, Any]:
        return {"data_receiver_name": "conformance", "protocol": self.protocol, "poll_interval": 1,
                "connections": [self.store.connection],
                "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                "process_files_alphabetically": True,
                "streams": [{"asset": "conformance", "stream_type": "test", "file_filter": ["*.csv"]}]}

    def add(self, seqs: range) -> None:
        self.files += 1
        self.store.put(f"part-{self.files:04d}.csv",
                       b"seq,value\n" + "".join(f"{s},{s / 2}\n" for s in seqs).encode())

    def break_input(self) -> None:
        self.files += 1
        self.store.put(f"part-{self.files:04d}.csv", b"seq,value\n1,2\n3\n")


@receiver_harness
class S3Harness(RemoteFileHarness):
    protocol = "s3"


@receiver_harness
class AzureDataLakeGen2Harness(RemoteFileHarness):
    protocol = "azure_data_lake_gen2"


@receiver_harness
class AzureDataLakeHarness(RemoteFileHarness):
    protocol = "azure_data_lake"


@receiver_harness
class SmbHarness(RemoteFileHarness):
    protocol = "smb"



def hourly_files(csv: Path) -> dict[str, bytes]:
    """The NAB series split into one CSV file per hour (``nab-YYYY-MM-DDTHH.csv``), each with
    the header."""
    header, lines = nab_lines(csv)
    files: dict[str, list[bytes]] = {}
    for line in lines:
        files.setdefault(f"nab-{line[:10].decode()}T{line[11:13].decode()}.csv", []).append(line)
    return {name: header + b"".join(part) for name, part in files.items()}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nab_hourly_files_through_a_sigkill(protocol: str, request: pytest.FixtureRequest, tmp_path: Path,
                                            nab_machine_csv: Path, flows: Any) -> None:
    store = make_store(protocol, request)
    files = hourly_files(nab_machine_csv)
    assert len(files) > 1_000
    store.fs.pipe({store.path(name): data for name, data in files.items()})
    config = store.document(process_files_alphabetically=True, poll_interval=2)
    config["data_receiver"][0]["streams"][0].update(asset="nab", stream_type="hourly")
    if protocol == "azure_data_lake":  # 100 files per poll by default
        config["data_receiver"][0]["connections"][0]["max_files_per_request"] = 1_000
    flow = flows(tmp_path / "home", config)
    out = "nab__hourly.jsonl"
    flow.start()
    flow.wait_for(lambda: len(flow.output("local", out)) >= NAB_ROWS // 2, timeout=180, what="half the rows")
    flow.kill()
    at_kill = len(flow.output("local", out))
    flow.start()
    expected = {(line[:19].decode().replace(" ", "T") + "Z", float(line[20:])) for line in
                nab_lines(nab_machine_csv)[1]}
    flow.wait_for(lambda: len(flow.output("local", out)) >= NAB_ROWS
                  and {(r["timestamp"], r["value"]) for r in flow.output("local", out)} == expected,
                  timeout=240, what="every row after the crash")
    assert flow.stop() == 0
    records = flow.output("local", out)
    counts = Counter((r["timestamp"], r["value"]) for r in records)
    assert set(counts) == expected  # none lost
    assert len(records) == NAB_ROWS, f"{len(records) - NAB_ROWS} records delivered twice"
    taken_back = flow.log(2).count("taken back")
    print(f"{protocol}: {len(files)} hourly files; SIGKILL with {at_kill} records written; after the restart "
          f"{len(records)} records, {len(counts)} distinct ({taken_back} files cut back on resume)")


def test_a_server_restart_is_ridden_out_with_nothing_resent_or_skipped(request: pytest.FixtureRequest,
                                                                       tmp_path: Path) -> None:
    samba = request.getfixturevalue("samba")
    store = make_store("smb", request)
    store.put("a.csv", b"ts,v\n1,10\n")
    rec = load(store.document()).data_receiver[0]
    clock = Clock.ahead(3600)  # files written now are already still
    ctx = context(tmp_path / "home", clock)
    partition = StreamDriver(rec, ctx)
    assert values(partition.next_batch()) == [[10]]
    samba.stop()
    try:
        clock.now = partition.next_poll
        assert partition.next_batch() == []
        (marker,) = [m for m in Ledger(ledger_path(ctx.home)).markers() if m.component == "files"]
        assert marker.level == "error" and "Reading files failed" in marker.message
    finally:
        samba.start()
    (samba.share / store.base.split("/")[-1] / "b.csv").write_bytes(b"ts,v\n2,20\n")
    got: list[list[int]] = []
    for _ in range(5):  # the stream's backoff, then its next polls
        clock.now = partition.next_poll
        got += values(partition.next_batch())
        if got:
            break
    assert got == [[20]]  # b, and not a again
    assert [m for m in Ledger(ledger_path(ctx.home)).markers() if m.component == "files"] == []
    partition.close()


def test_several_connections_per_receiver(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    first, second = make_store("s3", request), make_store("s3", request)
    first.put("b.csv", b"ts,v\n1,1\n")
    second.put("a.csv", b"ts,v\n2,2\n")
    first.put("c.csv", b"ts,v\n3,3\n")
    doc = first.document(process_files_alphabetically=True, process_ordered_connections=True)
    doc["data_receiver"][0]["connections"].append(second.connection)
    rec = load(doc).data_receiver[0]
    reader = rec.open_stream(rec.streams[0], None, context(tmp_path / "home"), None)
    batches = drain(reader)
    # every file of the first connection, then the second's
    assert [b.source for b in batches] == [first.key("b.csv"), first.key("c.csv"), second.key("a.csv")]
    assert set(reader.snapshot()["files"]) == {first.key("b.csv"), first.key("c.csv"), second.key("a.csv")}
