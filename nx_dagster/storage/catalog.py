"""The lakehouse catalog: DuckLake over Parquet, one snapshot per write.

Where things live is `location.Location`: the data under NX_HOME (a local folder or s3://bucket/prefix:
data/ holds the Parquet files, root_id names the root), the metadata in NX_CATALOG (a SQLite file,
by default catalog.sqlite in the local state folder, or PostgreSQL), and the local state folder
(NX_HOME itself when local) with .catalog.lock (serializes this machine's writers), staging/ (Parquet
being prepared for a commit) and .dagster/ (the root's Dagster run history). Data file paths are stored
relative to data/, and every attach names the root's own data/ (OVERRIDE_DATA_PATH), so a local data
root can be moved, copied or mounted elsewhere (read-only too) and still answers.

The catalog's jobs are modules of their own; this facade is what a caller uses:
- `locking`: the writer lock (one committing process at a time) and retries while the catalog database
  is busy, both bounded by NX_CATALOG_WAIT_S (`wait_seconds`; past it `CatalogBusy`);
- `migration`: a catalog of an earlier version gains the tables and columns added since (on connect);
- `writes`: partition replacements, their Parquet written before the lock is taken (`data_files`), so
  the lock covers only the metadata transaction; a write that fails removes what it wrote (`DiskFull`
  for a full disk); `replace_if_changed` writes nothing for an unchanged partition;
- `cleanup.collect` (`nxd gc`) finds and removes files that no snapshot references.
Several processes can write partitions at once and all of them land; readers need no lock.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import duckdb
import pyarrow as pa

from nx_dagster.errors import NxInputError
from nx_dagster.storage import attach, locking, migration
from nx_dagster.storage import writes as write_path
from nx_dagster.storage.attach import ALIAS  # noqa: F401 - re-exported
from nx_dagster.storage.location import Location
from nx_dagster.storage.locking import CatalogBusy, wait_seconds  # noqa: F401 - re-exported
from nx_dagster.storage.writes import DiskFull, disk_full, is_disk_full  # noqa: F401 - re-exported

T = TypeVar("T")


class Catalog:
    """A data root's catalog. `home`: NX_HOME (default ./nx_data); `catalog`: NX_CATALOG (default: the
    embedded SQLite file). Nothing is created until the first write."""

    def __init__(self, home: str | os.PathLike | None = None, catalog: str | None = None):
        self.where = Location.resolve(home, catalog)
        self.home: str = self.where.home  # an absolute local path, or s3://bucket/prefix
        self.local: Path = self.where.state  # this machine's state for the root (NX_HOME itself when local)
        self.data_url: str = self.where.data_url
        self.lock_path = locking.lock_path(self.where)
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
            if is_disk_full(e):
                raise disk_full(self.where, e) from e
            raise NxInputError(what, f"is not writable ({e.strerror or e})",
                               "point it at a folder you can write to, or fix its permissions") from e
        probe.unlink()
        if self.where.catalog.kind == "postgres":
            attach.exists(self.where)  # reachable, credentials accepted, database present: or a named error
        if self.where.remote:
            from nx_dagster.storage import s3

            s3.check_bucket(self.home, write=True)

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

        con = self.retry(attached)
        if not read_only:
            migration.migrate(con, self.where)
        return con

    @contextlib.contextmanager
    def session(self, read_only: bool = False, snapshot: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self.connect(read_only, snapshot)
        try:
            yield con
        finally:
            con.close()

    def writer_lock(self) -> contextlib.AbstractContextManager[None]:
        """The writer lock (`locking.writer_lock`): hold it around a change that no other commit may
        interleave with. Waited for at most NX_CATALOG_WAIT_S; past that, CatalogBusy."""
        return locking.writer_lock(self.where)

    def retry(self, fn: Callable[[], T]) -> T:
        """`fn()`, retried while the catalog database is busy (`locking.retry`), for at most
        NX_CATALOG_WAIT_S; past that, CatalogBusy."""
        return locking.retry(self.where, fn)

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
        """Several partition replacements in one transaction: one snapshot, all or nothing
        (`writes.replace_many`: the Parquet is written before the writer lock is taken)."""
        return write_path.replace_many(self.where, self.connect, writes, message)

    def replace_if_changed(
        self, table: str, rows: pa.Table | Iterable[pa.Table], keys: dict[str, object], message: str = "",
        ignore: Sequence[str] = (),
    ) -> int:
        """Like `replace`, but when the partition already holds exactly these rows (as a multiset, the
        `ignore` columns left out: e.g. a creation time) nothing is written and the current snapshot is
        returned, so re-running an unchanged step adds no files and no snapshot (releases stay small)."""
        return write_path.replace_if_changed(self.where, self.connect, table, rows, keys, message, ignore)

    def query(self, sql: str, params: Sequence | None = None) -> pa.Table:
        with self.session() as con:
            return self.retry(lambda: con.execute(sql, params or []).fetch_arrow_table())
