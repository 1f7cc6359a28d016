"""The write path: partitions replaced in one transaction, their Parquet written before the commit.

`replace_many` deletes the rows of each partition (the rows matching `keys`: column -> value or list
of values) and registers its new rows, all in one DuckLake transaction: one snapshot, all or nothing.
Rows that come as an iterable of Arrow tables are first staged to Parquet under the local state
folder's staging/ (`staged`: memory stays flat). Each partition's rows are written to one Parquet file
under its table's data folder before the writer lock is taken (`prewrite`, `data_files`), so the lock
(`locking`) covers only the metadata transaction (`commit`), which is retried while the catalog is
busy. `replace_if_changed` writes nothing when the partition already holds exactly the rows given.

A write that fails removes the partition files it wrote, and the delete files its transaction wrote
(`remove_unreferenced`; unless the catalog is shared with other machines: then `nxd gc`). A write to a
full disk fails with `DiskFull`.

Every function takes the root's `Location` and `connect`, which opens a writable connection with the
catalog attached and its tables migrated (`Catalog.connect`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import uuid
from typing import Callable, Iterable, Iterator, Sequence

import duckdb
import pyarrow as pa

from nx_dagster import procs
from nx_dagster.errors import NxInputError
from nx_dagster.storage import data_files
from nx_dagster.storage.attach import ALIAS, retryable
from nx_dagster.storage.location import Location
from nx_dagster.storage.locking import retry, writer_lock
from nx_dagster.storage.schema import TABLES, columns

log = logging.getLogger(__name__)
Connect = Callable[[], duckdb.DuckDBPyConnection]
Rows = pa.Table | str | Iterable[pa.Table]
# a partition ready to commit: (table, its new file's URL or None for no rows, condition, parameters)
Prepared = tuple[str, str | None, str, list]


class DiskFull(NxInputError):
    """A write to NX_HOME failed with "No space left on device" (ENOSPC)."""


def is_disk_full(e: BaseException) -> bool:
    text = str(e).lower()
    return getattr(e, "errno", None) == errno.ENOSPC or "no space left on device" in text or "disk is full" in text


def disk_full(where: Location, e: BaseException) -> DiskFull:
    """The error of a write to `where` that found its disk full."""
    return DiskFull(f"NX_HOME {where.home!r}", "disk full (No space left on device); what this write "
                    "created was removed", "free space on that disk (`nxd gc --apply` removes files no "
                    "snapshot references) or point NX_HOME at a disk with room")


def replace_many(where: Location, connect: Connect, writes: list[tuple[str, Rows, dict[str, object]]],
                 message: str = "") -> int:
    """Several partition replacements in one transaction: one snapshot, all or nothing.

    Each write's rows are first written to one Parquet file under its table's data folder with no
    lock held (`data_files`); the writer lock then covers only the transaction: delete the
    partitions, register the files, commit. A write that does not commit removes its files."""
    with contextlib.ExitStack() as stack:
        con = connect()
        stack.callback(con.close)
        written: list[str] = []
        stack.callback(_drop_uncommitted, where, connect, written)
        prepared = []
        for table, rows, keys in writes:
            if table not in TABLES:
                raise KeyError(f"unknown table {table}")
            if not isinstance(rows, (pa.Table, str)):
                rows = stack.enter_context(staged(where, rows))
            prepared.append((table, prewrite(con, where, table, rows, written), *_partition(keys)))
        with writer_lock(where):
            snap = commit(where, connect, con, prepared, message)
        written.clear()  # committed: the catalog owns them now
        return snap


def replace_if_changed(where: Location, connect: Connect, table: str, rows: pa.Table | Iterable[pa.Table],
                       keys: dict[str, object], message: str = "", ignore: Sequence[str] = ()) -> int:
    """Like `replace_many` with one write, but when the partition already holds exactly these rows (as a
    multiset, the `ignore` columns left out: e.g. a creation time) nothing is written and the current
    snapshot is returned, so re-running an unchanged step adds no files and no snapshot."""
    with contextlib.ExitStack() as stack:
        if not isinstance(rows, pa.Table):
            rows = stack.enter_context(staged(where, rows))
        cond, params = _partition(keys)
        con = connect()
        try:
            with writer_lock(where):
                if _holds(con, table, rows, cond, params, ignore):
                    log.info("%s: partition %s unchanged, nothing written", table, keys)
                    return con.execute(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()").fetchone()[0]
                written: list[str] = []
                try:
                    prepared = [(table, prewrite(con, where, table, rows, written), cond, params)]
                    snap = commit(where, connect, con, prepared, message)
                    written.clear()
                    return snap
                finally:
                    _drop_uncommitted(where, connect, written)
        finally:
            con.close()


@contextlib.contextmanager
def staged(where: Location, tables: Iterable[pa.Table]) -> Iterator[str]:
    """`tables` written to Parquet files in a new folder under the local state folder's staging/ (named
    after this process, so `nxd gc` can tell a dead writer's folder); yields them as a SQL source
    (`read_parquet('…')`, "" for none) and removes the folder after."""
    import pyarrow.parquet as pq

    me = procs.identity()
    folder = where.state / "staging" / f"{me['pid']}-{me['start']}-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    try:
        n = 0
        for i, t in enumerate(tables):
            try:
                pq.write_table(t, folder / f"part-{i:06d}.parquet")
            except OSError as e:
                if is_disk_full(e):
                    raise disk_full(where, e) from e
                raise
            n += 1
        yield f"read_parquet('{folder}/*.parquet')" if n else ""
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def prewrite(con: duckdb.DuckDBPyConnection, where: Location, table: str, rows: pa.Table | str,
             written: list[str]) -> str | None:
    """`rows` written to a new Parquet file of `table` (`data_files.write`), before the commit and with
    no lock held; its URL (None for no rows) is returned and appended to `written`."""
    try:
        url = data_files.write(con, where.fs, data_files.table_folder(where.data_url, table),
                               columns(table), table, rows)
    except (OSError, duckdb.Error) as e:
        if is_disk_full(e):
            raise disk_full(where, e) from e
        raise
    if url:
        written.append(url)
    return url


def commit(where: Location, connect: Connect, con: duckdb.DuckDBPyConnection, prepared: list[Prepared],
           message: str) -> int:
    """The transaction of `prepared` (writer lock held), retried while the catalog is busy; returns
    the new snapshot id. A commit that SQLite refused ("database is locked") can leave the metadata
    connection of `con` holding the lock it was taking, which would block every reader and the retry
    itself (seen as two writers hung, one in its next DELETE, one in ATTACH): each retry therefore
    closes that connection and commits through a new one."""
    # with a shared catalog another machine may be writing beside this one: nothing is removed then
    before = set() if where.catalog.shared else _data_files(where, (p[0] for p in prepared))
    current = [con]

    def attempt() -> int:
        if current[0] is None:
            current[0] = connect()
        c = current[0]
        try:
            _transaction(where, c, prepared, message, before)
            return c.execute(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()").fetchone()[0]
        except duckdb.Error as e:
            if retryable(e):
                c.close()
                current[0] = None
            raise

    try:
        return retry(where, attempt)
    except BaseException as e:
        if is_disk_full(e):
            raise disk_full(where, e) from e
        raise
    finally:
        if current[0] is not None and current[0] is not con:
            current[0].close()


def _transaction(where: Location, con: duckdb.DuckDBPyConnection, prepared: list[Prepared], message: str,
                 before: set[str]) -> None:
    """One transaction: delete each partition, register its new file. If it fails, the files DuckLake
    wrote in it (delete files; those not in `before`) are removed; the registered files are the
    caller's to remove."""
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
        if where.catalog.shared:
            log.warning("a transaction failed; the delete files it wrote stay until `nxd gc --apply` "
                        "(with a shared catalog another machine's commit may be writing beside it)")
        else:
            # other writers' files written before their commit (nx-…) are theirs, not this transaction's
            created = {f for f in _data_files(where, (t for t, *_ in prepared)) - before
                       if not f.rsplit("/", 1)[-1].startswith(data_files.PREFIX)}
            remove_unreferenced(where, con, created)
        raise


def _data_files(where: Location, tables: Iterable[str]) -> set[str]:
    """The files under the data folders of `tables` (DuckLake writes `data/main/<table>/…`), as
    paths of `where.fs`: what a failed transaction wrote is the difference of two of these."""
    fs, out = where.fs, set()
    for table in set(tables):
        try:
            out.update(fs.find(data_files.table_folder(where.data_url, table)))
        except FileNotFoundError:
            pass
    return out


def _drop_uncommitted(where: Location, connect: Connect, written: list[str]) -> None:
    """Remove the files of a write that did not commit (unless the catalog references them after all:
    a commit whose reply was lost; if the catalog cannot be read they stay, for `nxd gc`)."""
    if not written:
        return
    try:
        with contextlib.closing(connect()) as con:
            remove_unreferenced(where, con, set(written))
    except Exception:  # noqa: BLE001 - the write's own error is the one to report
        log.exception("could not check the catalog to remove %d uncommitted files; `nxd gc` will", len(written))


def referenced(where: Location, con: duckdb.DuckDBPyConnection) -> set[str]:
    """File names of every data and delete file that any snapshot references (DuckLake's metadata
    tables, read through `con`, a connection with the catalog attached)."""
    meta = f"__ducklake_metadata_{ALIAS}"
    rows = retry(where, lambda: con.execute(
        f"SELECT path FROM {meta}.ducklake_data_file UNION ALL SELECT path FROM {meta}.ducklake_delete_file"
    ).fetchall())
    return {r[0].rsplit("/", 1)[-1] for r in rows}


def remove_unreferenced(where: Location, con: duckdb.DuckDBPyConnection, created: set[str]) -> None:
    """Remove the files in `created` (paths of the root's filesystem, written under data/ by a
    transaction that failed) that the catalog does not reference. Call it with the writer lock held,
    so no other transaction (on this machine, with a catalog no other machine writes) wrote them."""
    if not created:
        return
    try:
        keep = referenced(where, con)
    except Exception:  # noqa: BLE001 - without the metadata, removing nothing is the safe choice
        log.exception("could not read the catalog to clean up after a failed write; kept %d files", len(created))
        return
    for path in created:
        if path.rsplit("/", 1)[-1] not in keep:
            with contextlib.suppress(FileNotFoundError):
                where.fs.rm_file(path)
                log.warning("removed %s, written by a failed transaction", path)


def _holds(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table | str, cond: str, params: list,
           ignore: Sequence[str]) -> bool:
    """Whether `table WHERE cond` holds the same multiset of rows as `rows` (count and the sum of
    md5 row hashes over the table's columns, cast to the table's types; `ignore` columns left out)."""
    cols = [(c, t) for c, t in con.execute(
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
        f"CAST({c} AS {t}) AS {c}" if c in have else f"NULL::{t} AS {c}" for c, t in cols)
    digest = "SELECT count(*), coalesce(sum(md5_number_lower(CAST(_r AS VARCHAR))::HUGEINT), 0) FROM ({}) _r"
    try:
        new = con.execute(digest.format(f"SELECT {pick(present)} FROM {source}")).fetchone()
        old = con.execute(digest.format(f"SELECT {pick({c for c, _ in cols})} FROM {table} WHERE {cond}"),
                          params).fetchone()
    finally:
        if isinstance(rows, pa.Table):
            con.unregister("_incoming")
    return new == old


def _partition(keys: dict[str, object]) -> tuple[str, list]:
    """The SQL condition (and its parameters) of the partition `keys`: column -> value (None: NULL) or
    a list of values."""
    conds, params = [], []
    for col, val in keys.items():
        if isinstance(val, (list, tuple, set, range)):
            vals = list(val)
            conds.append(f"{col} IN ({', '.join('?' * len(vals))})" if vals else "FALSE")
            params.extend(vals)
        elif val is None:
            conds.append(f"{col} IS NULL")
        else:
            conds.append(f"{col} = ?")
            params.append(val)
    return " AND ".join(conds) or "TRUE", params
