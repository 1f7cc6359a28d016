"""The lakehouse catalog: DuckLake over Parquet under NX_HOME, one snapshot per write.

Layout of a local NX_HOME:  catalog.sqlite (the DuckLake metadata), data/ (Parquet files),
.catalog.lock (serializes writers), root_id, .dagster/ (the root's Dagster run history). Data file paths are
stored relative to data/, and every attach names the root's own data/ (OVERRIDE_DATA_PATH), so a data root
can be moved, copied or mounted elsewhere (read-only too) and still answers; a copy never reads or writes
the original. A SQLite-backed DuckLake admits one committing process at a time;
writers take an exclusive file lock around their commit and retry on "database is locked", so several
processes can write partitions at once and all of them land. Readers need no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import duckdb
import pyarrow as pa

from nx_dagster.errors import NxInputError
from nx_dagster.storage.extensions import load_extension
from nx_dagster.storage.schema import TABLES

log = logging.getLogger(__name__)
ALIAS = "nx"
DEFAULT_HOME = "./nx_data"


def home_from_env() -> str:
    return os.environ.get("NX_HOME") or DEFAULT_HOME


def _is_locked_error(e: Exception) -> bool:
    text = str(e).lower()
    return "database is locked" in text or "database is busy" in text or "conflict" in text


class Catalog:
    def __init__(self, home: str | os.PathLike | None = None):
        home = str(home or home_from_env())
        if "://" in home:
            raise NxInputError(
                f"NX_HOME {home!r}", "object storage is not supported by this version yet",
                "set NX_HOME to a local folder",
            )
        self.home = Path(home).expanduser().resolve()
        self.data_path = self.home / "data"
        self.catalog_path = self.home / "catalog.sqlite"
        self.lock_path = self.home / ".catalog.lock"

    def root_id(self) -> str:
        """This data root's id (a UUID written once into `root_id`): it moves and is copied with the
        root, and names the root in the Dagster instance that holds its run history."""
        path = self.home / "root_id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            self.home.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:  # another process created it first
                return path.read_text().strip()
            with os.fdopen(fd, "w") as fh:
                fh.write(uuid.uuid4().hex + "\n")
            return path.read_text().strip()

    def check_writable(self) -> None:
        """Fail early, before any computation, if NX_HOME cannot take writes."""
        try:
            self.data_path.mkdir(parents=True, exist_ok=True)
            probe = self.home / f".write-probe-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise NxInputError(
                f"NX_HOME {str(self.home)!r}", f"is not writable ({e.strerror or e})",
                "point NX_HOME at a folder you can write to, or fix its permissions",
            ) from e

    def connect(self, read_only: bool = False, snapshot: int | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the catalog attached as `nx` and selected, tables created.

        `read_only` (what `nxd sql` uses) writes nothing under NX_HOME, so a shared or read-only
        data root can be queried; it needs a catalog that a run has already created. `snapshot` (a
        DuckLake snapshot id; read-only only) attaches the whole catalog as it was at that snapshot:
        the one way to read a release or any past state."""
        if snapshot is not None and not read_only:
            raise ValueError("a catalog attached at a past snapshot is read-only: pass read_only=True")
        if read_only:
            if not self.catalog_path.is_file():
                raise NxInputError(
                    f"NX_HOME {str(self.home)!r}", "holds no catalog yet",
                    "run `nxd run` first, or point NX_HOME (or --home) at an existing data root",
                )
        else:
            self.check_writable()
        con = duckdb.connect()
        for ext in ("sqlite", "ducklake"):
            load_extension(con, ext)
        self._retry(lambda: con.execute(
            f"ATTACH IF NOT EXISTS 'ducklake:sqlite:{self.catalog_path}' AS {ALIAS} "
            f"(DATA_PATH '{self.data_path}/', OVERRIDE_DATA_PATH TRUE{', READ_ONLY' if read_only else ''}"
            f"{f', SNAPSHOT_VERSION {int(snapshot)}' if snapshot is not None else ''})"
        ))
        con.execute(f"USE {ALIAS}")
        if read_only:
            return con
        existing = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = ?", [ALIAS]).fetchall()}
        missing = [t for t in TABLES if t not in existing]
        if missing:
            with self._writer_lock():
                for t in missing:
                    self._retry(lambda t=t: con.execute(f"CREATE TABLE IF NOT EXISTS {t} ({TABLES[t]})"))
        return con

    @contextlib.contextmanager
    def session(self, read_only: bool = False, snapshot: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self.connect(read_only, snapshot)
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _writer_lock(self):
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _retry(fn, attempts: int = 30):
        for i in range(attempts):
            try:
                return fn()
            except duckdb.Error as e:
                if not _is_locked_error(e) or i == attempts - 1:
                    raise
                time.sleep(min(2.0, 0.05 * 2**i) * (0.5 + random.random()))

    def replace(
        self, table: str, rows: pa.Table | str | Iterable[pa.Table], keys: dict[str, object], message: str = "",
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> int:
        """Atomically delete the rows matching `keys` (a partition) and insert `rows`.

        `keys` maps column -> value or list of values. `rows` is a table, or an iterable of tables that
        is first staged to Parquet under NX_HOME/staging (memory stays flat; the lock is held only for
        the commit). Returns the DuckLake snapshot id. Either the whole replacement lands or nothing does.
        """
        return self.replace_many([(table, rows, keys)], message, con)

    def replace_many(
        self, writes: list[tuple[str, pa.Table | str | Iterable[pa.Table], dict[str, object]]], message: str = "",
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> int:
        """Several partition replacements in one transaction: one snapshot, all or nothing."""
        with contextlib.ExitStack() as stack:
            prepared = []
            for table, rows, keys in writes:
                if table not in TABLES:
                    raise KeyError(f"unknown table {table}")
                if not isinstance(rows, (pa.Table, str)):
                    rows = stack.enter_context(self._staged(rows))
                prepared.append((table, rows, *_where(keys)))
            own = con is None
            con = con or self.connect()
            try:
                with self._writer_lock():
                    return self._retry(lambda: self._commit(con, prepared, message))
            finally:
                if own:
                    con.close()

    def replace_if_changed(
        self, table: str, rows: pa.Table | Iterable[pa.Table], keys: dict[str, object], message: str = "",
        ignore: Sequence[str] = (),
    ) -> int:
        """Like `replace`, but when the partition already holds exactly these rows (as a multiset, the
        `ignore` columns left out: e.g. a creation time) nothing is written and the current snapshot is
        returned, so re-running an unchanged step adds no files and no snapshot (releases stay small)."""
        with contextlib.ExitStack() as stack:
            if not isinstance(rows, pa.Table):
                rows = stack.enter_context(self._staged(rows))
            cond, params = _where(keys)
            con = self.connect()
            try:
                with self._writer_lock():
                    if self._holds(con, table, rows, cond, params, ignore):
                        log.info("%s: partition %s unchanged, nothing written", table, keys)
                        return con.execute(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()").fetchone()[0]
                    return self._retry(lambda: self._commit(con, [(table, rows, cond, params)], message))
            finally:
                con.close()

    @staticmethod
    def _holds(con, table: str, rows: pa.Table | str, cond: str, params: list, ignore: Sequence[str]) -> bool:
        """Whether `table WHERE cond` holds the same multiset of rows as `rows` (count and the sum of
        md5 row hashes over the table's columns, cast to the table's types; `ignore` columns left out)."""
        columns = [(c, t) for c, t in con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = ? AND table_name = ? "
            "ORDER BY ordinal_position", [ALIAS, table]).fetchall() if c not in ignore]
        if isinstance(rows, pa.Table):
            con.register("_incoming", rows)
            source, present = "_incoming", set(rows.column_names)
        elif rows:
            source = rows
            present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {rows}").fetchall()}
        else:
            source, present = "(SELECT 1 WHERE false)", set()
        pick = lambda have: ", ".join(  # noqa: E731
            f"CAST({c} AS {t}) AS {c}" if c in have else f"NULL::{t} AS {c}" for c, t in columns)
        digest = "SELECT count(*), coalesce(sum(md5_number_lower(CAST(_r AS VARCHAR))::HUGEINT), 0) FROM ({}) _r"
        try:
            new = con.execute(digest.format(f"SELECT {pick(present)} FROM {source}")).fetchone()
            old = con.execute(digest.format(f"SELECT {pick({c for c, _ in columns})} FROM {table} WHERE {cond}"),
                              params).fetchone()
        finally:
            if isinstance(rows, pa.Table):
                con.unregister("_incoming")
        return new == old

    @contextlib.contextmanager
    def _staged(self, tables: Iterable[pa.Table]) -> Iterator[str]:
        import pyarrow.parquet as pq

        folder = self.home / "staging" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        try:
            n = 0
            for i, t in enumerate(tables):
                pq.write_table(t, folder / f"part-{i:06d}.parquet")
                n += 1
            yield f"read_parquet('{folder}/*.parquet')" if n else ""
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _commit(con, prepared, message) -> int:
        con.execute("BEGIN TRANSACTION")
        try:
            for table, rows, cond, params in prepared:
                con.execute(f"DELETE FROM {table} WHERE {cond}", params)
                if isinstance(rows, str):
                    if rows:
                        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {rows}")
                elif rows.num_rows:
                    con.register("_incoming", rows)
                    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _incoming")
                    con.unregister("_incoming")
            if message:
                con.execute(f"CALL {ALIAS}.set_commit_message('nx_dagster', ?)", [message])
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        return con.execute(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()").fetchone()[0]

    def query(self, sql: str, params: Sequence | None = None) -> pa.Table:
        with self.session() as con:
            return self._retry(lambda: con.execute(sql, params or []).fetch_arrow_table())


def _where(keys: dict[str, object]) -> tuple[str, list]:
    where, params = [], []
    for col, val in keys.items():
        if isinstance(val, (list, tuple, set, range)):
            vals = list(val)
            where.append(f"{col} IN ({', '.join('?' * len(vals))})" if vals else "FALSE")
            params.extend(vals)
        elif val is None:
            where.append(f"{col} IS NULL")
        else:
            where.append(f"{col} = ?")
            params.append(val)
    return " AND ".join(where) or "TRUE", params
