"""A partition's Parquet file, written before its commit: the catalog's lock then covers metadata only.

DuckLake's INSERT writes the Parquet inside the transaction, so under the writer lock (PRODUCT.md §6:
one committing process at a time per catalog) every other writer waited while a partition's rows were
encoded and uploaded. Instead each write's rows go first (no lock held) to one new file under the
table's data folder, with the table's column names and types, and the commit registers it
(`ducklake_add_data_files`, which hands the file's ownership to DuckLake: snapshots, `nxd gc` and
DuckLake's own cleanup treat it like any file DuckLake wrote).

A file is named `nx-<pid>-<start>-<uuid>.parquet` after the process that wrote it, so that until its
commit lands it is told apart from an orphan: `nxd gc` spares the files of a writer that still runs
(`writer_alive`); a writer that dies between writing and committing leaves a file that gc removes.
"""

from __future__ import annotations

import contextlib
import uuid

import duckdb
import pyarrow as pa

from nx_dagster import procs

PREFIX = "nx-"


def table_folder(data_url: str, table: str) -> str:
    """Where DuckLake keeps `table`'s files under the root's data/ (`data_url` ends with '/')."""
    return f"{data_url}main/{table}/"


def new_name() -> str:
    me = procs.identity()
    return f"{PREFIX}{me['pid']}-{me['start'] or '0'}-{uuid.uuid4().hex}.parquet"


def writer_alive(name: str) -> bool:
    """Whether the process that wrote file `name` (a base name `nx-<pid>-<start>-<uuid>.parquet`) still
    runs on this host. Files of other names, or of a process that is gone, give False."""
    if not name.startswith(PREFIX):
        return False
    parts = name[len(PREFIX):].split("-")
    if len(parts) < 3 or not parts[0].isdigit():
        return False
    start = "" if parts[1] == "0" else parts[1]
    return procs.is_alive(procs.identity()["host"], parts[0], start) is True


def write(con: duckdb.DuckDBPyConnection, fs, folder: str, columns: list[tuple[str, str]], table: str,
          rows: pa.Table | str) -> str | None:
    """Write `rows` (an Arrow table, or a SQL source such as `read_parquet('…')`, or "" for none) to a
    new Parquet file in `folder`, as `table`'s columns `columns` [(name, SQL type)] in that order:
    each column cast to its type, a column `rows` lacks as NULL. Returns the file's URL, or None when
    there are no rows (nothing is kept; `fs`, the root's fsspec filesystem, removes an empty file).
    Raises ValueError for a column the table does not have; a failed write removes its partial file."""
    if isinstance(rows, str) and not rows:
        return None
    if isinstance(rows, pa.Table):
        if rows.num_rows == 0:
            return None
        present, source = set(rows.column_names), "_incoming"
    else:
        present, source = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {rows}").fetchall()}, rows
    unknown = sorted(present - {name for name, _ in columns})
    if unknown:
        raise ValueError(f"{table} has no columns {unknown}")
    select = ", ".join(f"CAST({c} AS {t}) AS {c}" if c in present else f"NULL::{t} AS {c}" for c, t in columns)
    fs.makedirs(folder, exist_ok=True)  # a local folder DuckLake has not made yet (a no-op on S3)
    url = folder + new_name()
    if isinstance(rows, pa.Table):
        con.register("_incoming", rows)
    try:
        n = con.execute(f"COPY (SELECT {select} FROM {source}) TO '{url}' (FORMAT parquet)").fetchone()[0]
    except BaseException:
        with contextlib.suppress(FileNotFoundError):  # a partial file (a full disk, an interrupt)
            fs.rm_file(url)
        raise
    finally:
        if isinstance(rows, pa.Table):
            con.unregister("_incoming")
    if n == 0:  # a SQL source with no rows: an empty file is not worth registering
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(url)
        return None
    return url
