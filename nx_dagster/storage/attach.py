"""Attach a data root's DuckLake catalog to a DuckDB connection, wherever its metadata and data live.

The metadata database is SQLite (a file) or PostgreSQL (`Location.catalog`); the data is a local folder
or `s3://` (DuckDB's httpfs extension, with a secret from the standard AWS settings). Every attach
names the root's own `data/` with `OVERRIDE_DATA_PATH`, so a moved or copied root reads its own files.

Errors: `NxInputError` for a catalog that does not exist yet (read-only use), a snapshot that does not
exist, and an unreachable or refusing PostgreSQL server (naming NX_CATALOG).
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import duckdb

from nx_dagster.errors import NxInputError
from nx_dagster.storage import extensions
from nx_dagster.storage.location import Location

ALIAS = "nx"
PG_FIX = "check NX_CATALOG (host, port, user, password, database) and that the server is running"


def extension_names(where: Location) -> list[str]:
    """The DuckDB extensions `where` needs."""
    return ["ducklake", "postgres" if where.catalog.kind == "postgres" else "sqlite"] + (["httpfs"] if where.remote else [])


def connect(where: Location) -> duckdb.DuckDBPyConnection:
    """A new DuckDB connection with what `where` needs loaded (offline, from the duckdb-extension-*
    packages) and its S3 secret; nothing attached yet."""
    con = extensions.connect(extension_names(where))
    if where.remote:
        from nx_dagster.storage import s3

        try:
            con.execute(s3.duckdb_secret(where.bucket))
        except BaseException:
            con.close()
            raise
    return con


def redact(text: str) -> str:
    """`text` without any password of a libpq string or URL (errors quote the connection string)."""
    text = re.sub(r"password\s*=\s*'(?:[^'\\]|\\.)*'", "password=***", text)
    text = re.sub(r"password\s*=\s*[^\s'\"]+", "password=***", text)
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]+):[^@\s]*@", r"\1:***@", text)


def _pg_error(where: Location, e: Exception) -> NxInputError:
    text = redact(" ".join(str(e).split())[:400])
    low = text.lower()
    if "password authentication failed" in low or "authentication" in low or "role" in low and "does not exist" in low:
        problem = f"refused the credentials ({text})"
    elif "database" in low and "does not exist" in low:
        problem = f"names a database that does not exist ({text}); create it first (createdb)"
    else:
        problem = f"cannot be reached ({text})"
    return NxInputError(f"NX_CATALOG {where.catalog.display()!r}", problem, PG_FIX)


def exists(where: Location) -> bool:
    """Whether the catalog database holds a DuckLake catalog already (nothing is created)."""
    db = where.catalog
    if db.kind == "sqlite":
        return Path(db.target).is_file()
    with contextlib.closing(extensions.connect(["postgres"])) as con:
        try:
            con.execute(f"ATTACH '{_q(db.target)}' AS pgmeta (TYPE postgres, READ_ONLY)")
            n = con.execute("SELECT count(*) FROM pgmeta.information_schema.tables "
                            "WHERE table_name = 'ducklake_metadata'").fetchone()[0]
        except duckdb.Error as e:
            raise _pg_error(where, e) from None
    return n > 0


def retryable(e: BaseException) -> bool:
    """SQLite busy, a DuckLake transaction conflict (another writer committed to the same table first:
    PostgreSQL catalogs), or two processes creating a fresh PostgreSQL catalog at once: worth a retry."""
    text = str(e).lower()
    return ("database is locked" in text or "database is busy" in text or "conflict" in text
            or ("failed to initialize ducklake" in text and ("duplicate key" in text or "already exists" in text)))


# pg_advisory_lock key of the writers of one catalog database (an arbitrary 63-bit constant: "nxdagstr")
WRITER_LOCK_KEY = 0x6E78646167737472


@contextlib.contextmanager
def advisory_lock(where: Location, wait: float):
    """Hold PostgreSQL's session advisory lock WRITER_LOCK_KEY in the catalog's database; yields True once
    held, False if `wait` seconds passed first. Needs psycopg2 (`pip install "nx_dagster[postgres]"`)."""
    try:
        import psycopg2
    except ImportError:
        raise NxInputError(f"NX_CATALOG {where.catalog.display()!r}", "needs psycopg2 for its writer lock",
                           'pip install "nx_dagster[postgres]" (or psycopg2-binary)') from None
    try:
        con = psycopg2.connect(where.catalog.target, connect_timeout=10)
    except psycopg2.Error as e:
        raise _pg_error(where, e) from None
    try:
        con.autocommit = True
        deadline = time.monotonic() + wait
        with con.cursor() as cur:
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK_KEY,))
                if cur.fetchone()[0]:
                    break
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        yield True
    finally:
        con.close()  # ends the session: the lock goes with it, also when the process dies


def _q(text: str) -> str:
    return text.replace("'", "''")


def attach(con: duckdb.DuckDBPyConnection, where: Location, read_only: bool, snapshot: int | None,
           busy_s: float = 600.0) -> None:
    """ATTACH the catalog as `nx` (and USE it). A busy SQLite file raises duckdb.Error: the caller retries
    with a new connection.

    A SQLite catalog waits up to `busy_s` for a lock another process holds (SQLite's busy timeout,
    `META_BUSY_TIMEOUT`) instead of failing at once: an ATTACH or COMMIT that fails with "database is
    locked" can leave its SQLite connection holding the lock it had (DuckLake keeps that connection for
    the life of the process), and two processes in that state block each other until the bound."""
    opts = [f"DATA_PATH '{_q(where.data_url)}'", "OVERRIDE_DATA_PATH TRUE"]
    if where.catalog.kind == "sqlite":
        opts.append(f"META_BUSY_TIMEOUT {max(1, int(busy_s * 1000))}")
    if read_only:
        opts.append("READ_ONLY")
    if snapshot is not None:
        opts.append(f"SNAPSHOT_VERSION {int(snapshot)}")
    sql = f"ATTACH IF NOT EXISTS '{_q(where.catalog.attach_uri)}' AS {ALIAS} ({', '.join(opts)})"
    try:
        con.execute(sql)
    except duckdb.InvalidInputException as e:
        if "version" in str(e).lower() and ("mismatch" in str(e).lower() or "migrat" in str(e).lower()):
            raise NxInputError(f"NX_CATALOG {where.catalog.display()!r}", "holds a DuckLake catalog of another "
                               f"version ({redact(str(e).splitlines()[0][:200])})",
                               "use the nx_dagster version that created it, or point NX_CATALOG (NX_HOME) at a "
                               "new catalog and re-run") from None
        if snapshot is not None and "no snapshot found" in str(e).lower():
            raise NxInputError(f"snapshot {snapshot}", "does not exist in this catalog",
                               "pick a snapshot_id from `nxd sql \"SELECT * FROM nx.snapshots()\"`, or leave "
                               "it out for the latest") from None
        raise
    except duckdb.Error as e:
        if retryable(e):
            raise
        if where.catalog.kind == "postgres":
            raise _pg_error(where, e) from None
        if where.remote and ("http" in str(e).lower() or "s3" in str(e).lower()):
            raise NxInputError(f"NX_HOME {where.home!r}", f"could not be read ({str(e).splitlines()[0][:200]})",
                               "check the AWS settings (docs/storage.md: Object storage)") from None
        raise
    con.execute(f"USE {ALIAS}")
