"""The lakehouse catalog: DuckLake over Parquet, one snapshot per write.

Where things live is `location.Location`: the data under NX_HOME (a local folder or s3://bucket/prefix:
data/ holds the Parquet files, root_id names the root), the metadata in NX_CATALOG (a SQLite file,
by default catalog.sqlite in the local state folder, or PostgreSQL), and the local state folder
(NX_HOME itself when local) with .catalog.lock (serializes this machine's writers), staging/ (Parquet
being prepared for a commit) and .dagster/ (the root's Dagster run history). Data file paths are stored
relative to data/, and every attach names the root's own data/ (OVERRIDE_DATA_PATH), so a local data
root can be moved, copied or mounted elsewhere (read-only too) and still answers.

A SQLite-backed DuckLake admits one committing process at a time; writers take an exclusive file lock
around their commit and retry on "database is locked" (and on DuckLake's transaction conflicts, which is
what concurrent writers to PostgreSQL see), so several processes can write partitions at once and all of
them land. Each partition's Parquet file is written before the lock is taken (`data_files`), so the lock
covers only the metadata transaction. Readers need no lock. Waiting (for the lock, SQLite's busy timeout,
retrying) is bounded by NX_CATALOG_WAIT_S (`wait_seconds`); past it a writer fails with `CatalogBusy`,
which names that setting. A write that fails removes the partition files it wrote, and the delete files
its transaction wrote (unless the catalog is shared with other machines: then `nxd gc`);
`cleanup.collect` (`nxd gc`) finds and removes files that no snapshot references.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import duckdb
import filelock
import pyarrow as pa

from nx_dagster import procs
from nx_dagster.errors import NxInputError, env_seconds
from nx_dagster.storage import attach, cleanup, data_files
from nx_dagster.storage.attach import ALIAS
from nx_dagster.storage.location import DEFAULT_HOME, Location, home_from_env  # noqa: F401 - re-exported
from nx_dagster.storage.schema import TABLES

log = logging.getLogger(__name__)
DEFAULT_WAIT_S = 600.0


class CatalogBusy(NxInputError):
    """Another writer held the catalog for longer than NX_CATALOG_WAIT_S."""


class DiskFull(NxInputError):
    """A write to NX_HOME failed with "No space left on device" (ENOSPC)."""


def wait_seconds() -> float:
    """NX_CATALOG_WAIT_S: how long a writer waits for its turn (lock + retries), in seconds."""
    return env_seconds("NX_CATALOG_WAIT_S", DEFAULT_WAIT_S, allow_zero=True)


def _is_disk_full(e: BaseException) -> bool:
    text = str(e).lower()
    return getattr(e, "errno", None) == errno.ENOSPC or "no space left on device" in text or "disk is full" in text


class Catalog:
    """A data root's catalog. `home`: NX_HOME (default ./nx_data); `catalog`: NX_CATALOG (default: the
    embedded SQLite file). Nothing is created until the first write."""

    def __init__(self, home: str | os.PathLike | None = None, catalog: str | None = None):
        self.where = Location.resolve(home, catalog)
        self.home: str = self.where.home  # an absolute local path, or s3://bucket/prefix
        self.local: Path = self.where.state  # this machine's state for the root (NX_HOME itself when local)
        self.data_url: str = self.where.data_url
        self.lock_path = self.local / ".catalog.lock"
        self._writable = self._readable = False  # checked once per Catalog

    @property
    def catalog_path(self) -> Path:
        """The SQLite file that holds the metadata (an embedded catalog only)."""
        if self.where.catalog.kind != "sqlite":
            raise ValueError(f"the catalog is in {self.where.catalog.kind}, not in a file")
        return Path(self.where.catalog.target)

    @property
    def data_path(self) -> Path:
        """NX_HOME/data as a local path (a local data root only)."""
        if self.where.remote:
            raise ValueError(f"the data of {self.home} is on object storage, not in a local folder")
        return Path(self.home) / "data"

    def describe(self) -> dict[str, str]:
        """Where this catalog lives, for metadata and messages (no password)."""
        return {"data_root": self.home, "catalog": self.where.catalog.display()}

    def exists(self) -> bool:
        """Whether a catalog has been created (a run has written) at this location."""
        return attach.exists(self.where)

    def root_id(self) -> str:
        """This data root's id (a UUID written once into `NX_HOME/root_id`): it moves and is copied with
        the root, and names the root in the Dagster instance that holds its run history."""
        if self.where.remote:
            fs, path = self.where.fs, self.where.url("root_id")
            try:
                return fs.cat_file(path).decode().strip()
            except FileNotFoundError:
                fs.pipe_file(path, (uuid.uuid4().hex + "\n").encode())
                return fs.cat_file(path).decode().strip()
        path = Path(self.home) / "root_id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:  # another process created it first
                return path.read_text().strip()
            with os.fdopen(fd, "w") as fh:
                fh.write(uuid.uuid4().hex + "\n")
            return path.read_text().strip()

    def check_writable(self) -> None:
        """Fail early, before any computation, if NX_HOME (and the local state folder) cannot take writes:
        for s3:// the bucket must exist and the credentials must be allowed to write under the prefix."""
        folder = self.local if self.where.remote else Path(self.home) / "data"
        probe = self.local / f".write-probe-{os.getpid()}"
        what = f"local state folder {str(self.local)!r} of NX_HOME {self.home!r} (NX_STATE)" if self.where.remote \
            else f"NX_HOME {self.home!r}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
        except OSError as e:
            with contextlib.suppress(OSError):
                probe.unlink()
            if _is_disk_full(e):
                raise self._disk_full(e) from e
            raise NxInputError(what, f"is not writable ({e.strerror or e})",
                               "point it at a folder you can write to, or fix its permissions") from e
        probe.unlink()
        if self.where.catalog.kind == "postgres":
            attach.exists(self.where)  # reachable, credentials accepted, database present: or a named error
        if self.where.remote:
            from nx_dagster.storage import s3

            s3.check_bucket(self.home, write=True)

    def _disk_full(self, e: BaseException) -> DiskFull:
        return DiskFull(f"NX_HOME {self.home!r}", "disk full (No space left on device); what this write "
                        "created was removed", "free space on that disk (`nxd gc --apply` removes files no "
                        "snapshot references) or point NX_HOME at a disk with room")

    def connect(self, read_only: bool = False, snapshot: int | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the catalog attached as `nx` and selected, tables created.

        `read_only` (what `nxd sql` uses) writes nothing, so a shared or read-only data root can be
        queried; it needs a catalog that a run has already created. `snapshot` (a DuckLake snapshot
        id; read-only only) attaches the whole catalog as it was at that snapshot: the one way to read
        a release or any past state."""
        if snapshot is not None and not read_only:
            raise ValueError("a catalog attached at a past snapshot is read-only: pass read_only=True")
        if read_only and not self._readable:
            if not self.exists():
                raise NxInputError(
                    f"NX_HOME {self.home!r}" + ("" if self.where.catalog.kind == "sqlite" and not self.where.remote
                                                else f" (NX_CATALOG {self.where.catalog.display()!r})"),
                    "holds no catalog yet",
                    "run `nxd run` first, or point NX_HOME (or --home) at an existing data root",
                )
            if self.where.remote:
                from nx_dagster.storage import s3

                s3.check_bucket(self.home, write=False)
            self._readable = True
        elif not read_only and not self._writable:
            self.check_writable()
            self._writable = True
        def attached() -> duckdb.DuckDBPyConnection:
            # a new connection for every try: an ATTACH that failed on a busy SQLite file may keep a read
            # lock open on its connection, which would hold off the very commit it is waiting for
            con = attach.connect(self.where)
            try:
                attach.attach(con, self.where, read_only, snapshot, wait_seconds())
                return con
            except BaseException:
                con.close()
                raise

        con = self._retry(attached)
        if read_only:
            return con
        existing: dict[str, set[str]] = {}
        for table, column in self._retry(lambda: con.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_catalog = ?",
                [ALIAS]).fetchall()):
            existing.setdefault(table, set()).add(column)
        missing = [t for t in TABLES if t not in existing]
        # a catalog written by an earlier version lacks the columns added since: add them (NULL in old rows)
        added = [(t, name, sql_type) for t in TABLES if t in existing
                 for name, sql_type in _columns(TABLES[t]) if name not in existing[t]]
        if missing or added:
            with self._writer_lock():
                for t in missing:
                    self._retry(lambda t=t: con.execute(f"CREATE TABLE IF NOT EXISTS {t} ({TABLES[t]})"))
                for t, name, sql_type in added:
                    self._retry(lambda t=t, n=name, ty=sql_type: con.execute(
                        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {n} {ty}"))
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
        """The exclusive writer lock (an OS file lock: it dies with its process), and for a catalog in
        PostgreSQL also a session advisory lock there (it dies with its connection), so that writers on
        all machines commit one at a time: DuckLake lets two transactions that both insert a partition
        that was empty commit side by side, which would store it twice. Waited for at most
        NX_CATALOG_WAIT_S; past that, CatalogBusy."""
        self.local.mkdir(parents=True, exist_ok=True)
        wait = wait_seconds()
        lock = filelock.FileLock(self.lock_path, timeout=wait)
        start = time.monotonic()
        try:
            lock.acquire(poll_interval=0.05)
        except filelock.Timeout:
            raise self._busy(wait, "its writer lock") from None
        try:
            if self.where.catalog.shared:
                with attach.advisory_lock(self.where, max(0.0, wait - (time.monotonic() - start))) as held:
                    if not held:
                        raise self._busy(wait, "the PostgreSQL writer lock")
                    yield
            else:
                yield
        finally:
            lock.release()

    def _busy(self, wait: float, what: str) -> CatalogBusy:
        return CatalogBusy(f"catalog {self.where.catalog.display()!r}", f"other writers held {what} for more than "
                           f"NX_CATALOG_WAIT_S={wait:g} s", "let the other runs finish, or raise NX_CATALOG_WAIT_S")

    def _retry(self, fn):
        """Call `fn`, retrying while SQLite says "database is locked" (another process is committing),
        with jittered exponential backoff (50 ms doubling up to 2 s), for at most NX_CATALOG_WAIT_S."""
        wait = wait_seconds()
        deadline = time.monotonic() + wait
        for i in range(1_000_000):
            try:
                return fn()
            except duckdb.Error as e:
                if not attach.retryable(e):
                    raise
                pause = min(2.0, 0.05 * 2 ** min(i, 6)) * (0.5 + random.random())
                if time.monotonic() + pause > deadline:
                    raise self._busy(wait, "the catalog database") from e
                log.debug("catalog busy (%s); retry %d in %.2f s", e, i + 1, pause)
                time.sleep(pause)

    def replace(
        self, table: str, rows: pa.Table | str | Iterable[pa.Table], keys: dict[str, object], message: str = "",
    ) -> int:
        """Atomically delete the rows matching `keys` (a partition) and insert `rows`.

        `keys` maps column -> value or list of values. `rows` is a table, or an iterable of tables that
        is first staged to Parquet under NX_HOME/staging (memory stays flat; the lock is held only for
        the commit). Returns the DuckLake snapshot id. Either the whole replacement lands or nothing does.
        """
        return self.replace_many([(table, rows, keys)], message)

    def replace_many(
        self, writes: list[tuple[str, pa.Table | str | Iterable[pa.Table], dict[str, object]]], message: str = "",
    ) -> int:
        """Several partition replacements in one transaction: one snapshot, all or nothing.

        Each write's rows are first written to one Parquet file under its table's data folder with no
        lock held (`data_files`); the writer lock then covers only the transaction: delete the
        partitions, register the files, commit. A write that does not commit removes its files."""
        with contextlib.ExitStack() as stack:
            con = self.connect()
            stack.callback(con.close)
            written: list[str] = []
            stack.callback(self._drop_uncommitted, written)
            prepared = []
            for table, rows, keys in writes:
                if table not in TABLES:
                    raise KeyError(f"unknown table {table}")
                if not isinstance(rows, (pa.Table, str)):
                    rows = stack.enter_context(self._staged(rows))
                prepared.append((table, self._prewrite(con, table, rows, written), *_where(keys)))
            with self._writer_lock():
                snap = self._commit_locked(con, prepared, message)
            written.clear()  # committed: the catalog owns them now
            return snap

    def _prewrite(self, con, table: str, rows: pa.Table | str, written: list[str]) -> str | None:
        try:
            url = data_files.write(con, self.where.fs, data_files.table_folder(self.data_url, table),
                                   _columns(TABLES[table]), table, rows)
        except (OSError, duckdb.Error) as e:
            if _is_disk_full(e):
                raise self._disk_full(e) from e
            raise
        if url:
            written.append(url)
        return url

    def _drop_uncommitted(self, written: list[str]) -> None:
        """Remove the files of a write that did not commit (unless the catalog references them after all:
        a commit whose reply was lost; if the catalog cannot be read they stay, for `nxd gc`)."""
        if not written:
            return
        try:
            with self.session() as con:
                cleanup.remove_unreferenced(self, con, set(written))
        except Exception:  # noqa: BLE001 - the write's own error is the one to report
            log.exception("could not check the catalog to remove %d uncommitted files; `nxd gc` will", len(written))

    def _commit_locked(self, con, prepared, message: str) -> int:
        """The transaction of `prepared` (writer lock held), retried while the catalog is busy; returns
        the new snapshot id. A commit that SQLite refused ("database is locked") can leave the metadata
        connection of `con` holding the lock it was taking, which would block every reader and the retry
        itself (seen as two writers hung, one in its next DELETE, one in ATTACH): each retry therefore
        closes that connection and commits through a new one."""
        # with a shared catalog another machine may be writing beside this one: nothing is removed then
        before = set() if self.where.catalog.shared else self._data_files(p[0] for p in prepared)
        current = [con]

        def attempt() -> int:
            if current[0] is None:
                current[0] = self.connect()
            c = current[0]
            try:
                self._commit(c, prepared, message, before)
                return c.execute(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()").fetchone()[0]
            except duckdb.Error as e:
                if attach.retryable(e):
                    c.close()
                    current[0] = None
                raise

        try:
            return self._retry(attempt)
        except BaseException as e:
            if _is_disk_full(e):
                raise self._disk_full(e) from e
            raise
        finally:
            if current[0] is not None and current[0] is not con:
                current[0].close()

    def _data_files(self, tables: Iterable[str]) -> set[str]:
        """The files under the data folders of `tables` (DuckLake writes `data/main/<table>/…`), as
        paths of `where.fs`: what a failed transaction wrote is the difference of two of these."""
        fs, out = self.where.fs, set()
        for table in set(tables):
            try:
                out.update(fs.find(f"{self.data_url}main/{table}/"))
            except FileNotFoundError:
                pass
        return out

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
                    written: list[str] = []
                    try:
                        prepared = [(table, self._prewrite(con, table, rows, written), cond, params)]
                        snap = self._commit_locked(con, prepared, message)
                        written.clear()
                        return snap
                    finally:
                        self._drop_uncommitted(written)
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

        me = procs.identity()
        folder = self.local / "staging" / f"{me['pid']}-{me['start']}-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        try:
            n = 0
            for i, t in enumerate(tables):
                try:
                    pq.write_table(t, folder / f"part-{i:06d}.parquet")
                except OSError as e:
                    if _is_disk_full(e):
                        raise self._disk_full(e) from e
                    raise
                n += 1
            yield f"read_parquet('{folder}/*.parquet')" if n else ""
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _commit(self, con, prepared, message, before) -> None:
        """One transaction: delete each partition, register its new file (`prepared`: [(table, file URL
        or None, condition, params)]). If it fails, the files DuckLake wrote in it (delete files; those
        not in `before`) are removed; the registered files are the caller's to remove."""
        con.execute("BEGIN TRANSACTION")
        try:
            for table, url, cond, params in prepared:
                con.execute(f"DELETE FROM {table} WHERE {cond}", params)
                if url:
                    # allow_missing: a column a newer version added to the catalog reads as NULL, as with INSERT
                    con.execute(f"CALL ducklake_add_data_files('{ALIAS}', '{table}', '{url}', allow_missing => true)")
            if message:
                con.execute(f"CALL {ALIAS}.set_commit_message('nx_dagster', ?)", [message])
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            if self.where.catalog.shared:
                log.warning("a transaction failed; the delete files it wrote stay until `nxd gc --apply` "
                            "(with a shared catalog another machine's commit may be writing beside it)")
            else:
                # other writers' files written before their commit (nx-…) are theirs, not this transaction's
                created = {f for f in self._data_files(t for t, *_ in prepared) - before
                           if not f.rsplit("/", 1)[-1].startswith(data_files.PREFIX)}
                cleanup.remove_unreferenced(self, con, created)
            raise

    def query(self, sql: str, params: Sequence | None = None) -> pa.Table:
        with self.session() as con:
            return self._retry(lambda: con.execute(sql, params or []).fetch_arrow_table())


def _columns(ddl: str) -> list[tuple[str, str]]:
    """(name, SQL type) of each column of a table's DDL (commas inside [] belong to the type)."""
    return [tuple(col.strip().split(None, 1)) for col in re.split(r",(?![^\[]*\])", ddl)]


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
