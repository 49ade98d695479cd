"""Loading the NAB machine temperature series into real databases and directories."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import sqlalchemy as sa

TABLE_DDL = ("CREATE TABLE machine_temperature (id SERIAL PRIMARY KEY, timestamp TIMESTAMP NOT NULL, "
             "value DOUBLE PRECISION)")
#: A composite cursor: safe even when rows share a timestamp.
QUERY = ("SELECT * FROM machine_temperature WHERE timestamp > :timestamp "
         "OR (timestamp = :timestamp AND id > :id) ORDER BY timestamp, id")
STATE_FIELDS = [{"column_name": "timestamp", "data_type": "timestamp", "initial_value": "2000-01-01 00:00:00"},
                {"column_name": "id", "data_type": "integer", "initial_value": 0}]


def nab_lines(csv: Path) -> tuple[bytes, list[bytes]]:
    """The header line and the data lines of a NAB CSV file (each ending in a newline)."""
    header, *lines = csv.read_bytes().splitlines(keepends=True)
    return header, lines


def create_table(url: str) -> None:
    """(Re)create the empty ``machine_temperature`` table."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS machine_temperature"))
        conn.execute(sa.text(TABLE_DDL))
    engine.dispose()


def insert_lines(url: str, lines: list[bytes]) -> None:
    """Insert NAB data lines (``timestamp,value``) with PostgreSQL's COPY."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        cursor = conn.connection.cursor()
        with cursor.copy("COPY machine_temperature (timestamp, value) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(b"".join(lines))
    engine.dispose()


def expected_utc(csv: Path, timezone: str) -> set[tuple[str, float]]:
    """(timestamp as ISO UTC with Z, value) of every row, read as local times in ``timezone``."""
    frame = pl.read_csv(csv, try_parse_dates=True)
    utc = frame["timestamp"].dt.replace_time_zone(timezone, ambiguous="earliest").dt.convert_time_zone("UTC")
    return set(zip(utc.dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_list(), frame["value"].to_list(), strict=True))
