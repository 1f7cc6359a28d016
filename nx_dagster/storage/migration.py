"""A catalog's tables brought to this version's schema (`schema.TABLES`).

A catalog written by an earlier version lacks the tables and columns added since: `migrate` creates
the missing tables and adds the missing columns (NULL in old rows), under the writer lock, with the
DDL generated from the schemas (`schema.ddl`, `schema.columns`).
"""

from __future__ import annotations

import duckdb

from nx_dagster.storage.attach import ALIAS
from nx_dagster.storage.location import Location
from nx_dagster.storage.locking import retry, writer_lock
from nx_dagster.storage.schema import TABLES, columns, ddl


def migrate(con: duckdb.DuckDBPyConnection, where: Location) -> None:
    """Create the tables of TABLES that the catalog attached to `con` lacks, and add the columns its
    tables lack; takes the writer lock only when there is something to do."""
    existing: dict[str, set[str]] = {}
    for table, column in retry(where, lambda: con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_catalog = ?",
            [ALIAS]).fetchall()):
        existing.setdefault(table, set()).add(column)
    missing = [t for t in TABLES if t not in existing]
    added = [(t, name, sql_type) for t in TABLES if t in existing
             for name, sql_type in columns(t) if name not in existing[t]]
    if missing or added:
        with writer_lock(where):
            for t in missing:
                retry(where, lambda t=t: con.execute(f"CREATE TABLE IF NOT EXISTS {t} ({ddl(t)})"))
            for t, name, sql_type in added:
                retry(where, lambda t=t, n=name, ty=sql_type: con.execute(
                    f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {n} {ty}"))
