"""Peak memory of a first poll over a big table: chunked (the default) versus all at once.

Starts a throwaway PostgreSQL, fills a table with ``--rows`` rows of ~250 bytes, and
reads it with the ``sql`` receiver in a fresh process twice: with ``chunk_size`` 10,000
and with ``chunk_size`` equal to the table. Prints each process's peak RSS.

    .venv/bin/python bench/sql_chunked_read.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.services.postgres import postgres_server  # noqa: E402

READER = """
import json, resource, sys, time
from pathlib import Path
from dataflows.config import load
from dataflows.runtime import RunContext
connection, chunk = json.loads(sys.argv[1]), int(sys.argv[2])
doc = {"transforms": [], "data_transmit": [{"transmit_name": "t", "transmit_type": "localfile"}],
       "data_receiver": [{"data_receiver_name": "db", "protocol": "sql", "chunk_size": chunk,
                          "connections": [connection],
                          "streams": [{"asset": "a", "stream_type": "s",
                                       "query": "SELECT * FROM big WHERE id > :id ORDER BY id",
                                       "state_fields": [{"column_name": "id", "data_type": "integer"}]}]}]}
rec = load(doc).data_receiver[0]
reader = rec.open_stream(rec.streams[0], None, RunContext(home=Path("/tmp")), {})
rows, batches, start, more = 0, 0, time.perf_counter(), True
while more:
    got, more = reader.read()
    rows += sum(b.frame.height for b in got)
    batches += len(got)
print(json.dumps({"rows": rows, "batches": batches, "seconds": time.perf_counter() - start,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with postgres_server() as pg:
        engine = sa.create_engine(pg.url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE big AS SELECT g AS id, now() AS ts, g * 0.5 AS value, "
                                 "repeat(md5(g::text), 7) AS payload FROM generate_series(1, :n) g"),
                         {"n": args.rows})
            size = conn.execute(sa.text("SELECT pg_total_relation_size('big')")).scalar()
        engine.dispose()
        print(f"table: {args.rows:,} rows, {size / 1e6:,.0f} MB in PostgreSQL")
        for chunk in (10_000, args.rows):
            done = subprocess.run([sys.executable, "-c", READER, json.dumps(pg.connection()), str(chunk)],
                                  cwd=REPO, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout)
            print(f"chunk_size {chunk:>9,}: {result['batches']:>4} batches, {result['rows']:,} rows in "
                  f"{result['seconds']:.1f} s ({result['rows'] / result['seconds']:,.0f} rows/s), "
                  f"peak RSS {result['peak_mb']:,.0f} MB")


if __name__ == "__main__":
    main()
