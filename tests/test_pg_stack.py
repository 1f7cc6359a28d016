"""The PostgreSQL test server and the stack a PostgreSQL catalog stands on: DuckDB's postgres extension
installed offline from its PyPI package, DuckLake metadata in PostgreSQL, and several processes
committing at once.

What DuckLake 1.5.5 does with concurrent writers on PostgreSQL (measured here, and asserted below):
- INSERTs into one table from several processes commit side by side, no conflict;
- a transaction that DELETEs and INSERTs (a partition rewrite) fails at COMMIT with
  `duckdb.TransactionException` "Failed to commit DuckLake transaction. Transaction conflict - attempting
  to insert into / delete from table with index "N" - but another transaction has deleted from /
  inserted into it" whenever another writer committed to the same table meanwhile, even when the
  partitions are disjoint; rolled back and retried, it succeeds;
- `CREATE TABLE IF NOT EXISTS` racing another: "Transaction conflict - attempting to create table ...
  has been created by another transaction already"; retried, it is a no-op;
- the very first ATTACH of an empty database racing another: "Failed to initialize DuckLake: ...
  duplicate key value violates unique constraint" (PostgreSQL creating the same metadata table twice);
  retried, it attaches to the catalog the other created (under load also: `relation "ducklake_metadata"
  already exists`).
"""

from __future__ import annotations

import multiprocessing
import random
import time
from urllib.parse import urlparse

import duckdb
import psycopg2
import pytest

from nx_dagster.storage.extensions import load_extension, packaged_extension


def _attach(url: str, data_path: str) -> duckdb.DuckDBPyConnection:
    u = urlparse(url)
    con = duckdb.connect()
    load_extension(con, "ducklake")
    load_extension(con, "postgres")
    dsn = f"dbname={u.path[1:]} host={u.hostname} port={u.port} user={u.username} password={u.password}"
    con.execute(f"ATTACH 'ducklake:postgres:{dsn}' AS nx (DATA_PATH '{data_path}')")
    return con


def _is_conflict(e: duckdb.Error) -> bool:
    text = str(e)
    return "Transaction conflict" in text or ("Failed to initialize DuckLake" in text
                                             and ("duplicate key" in text or "already exists" in text))


def _retry(fn, conflicts: list[str]):
    """Retry conflicts only, with jittered backoff, for up to 150 s (a busy 2-core CI machine is slow)."""
    deadline = time.monotonic() + 150
    for i in range(100_000):
        try:
            return fn()
        except duckdb.Error as e:
            if not _is_conflict(e) or time.monotonic() > deadline:
                raise
            conflicts.append(str(e))
            time.sleep(min(1.0, 0.02 * 2 ** min(i, 6)) * (0.5 + random.random()))


def _writer(url: str, data_path: str, layer: int, commits: int, out) -> None:
    """Attach (racing the others on a fresh catalog), create the table if missing, then rewrite this
    layer's partitions one transaction each (DELETE + INSERT), retrying conflicts only."""
    conflicts: list[str] = []
    con = _retry(lambda: _attach(url, data_path), conflicts)
    _retry(lambda: con.execute("CREATE TABLE IF NOT EXISTS nx.acts (layer INT, part INT, i BIGINT)"), conflicts)

    def rewrite(part: int) -> None:
        con.execute("BEGIN")
        try:
            con.execute("DELETE FROM nx.acts WHERE layer = ? AND part = ?", [layer, part])
            con.execute("INSERT INTO nx.acts SELECT ?, ?, range FROM range(500)", [layer, part])
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")  # a COMMIT that fails has rolled back already

    for i in range(commits):
        _retry(lambda: rewrite(i % 3), conflicts)
    out.put(conflicts)


def test_server_authenticates_and_gives_fresh_databases(pg_server):
    url = pg_server.create_database()
    with psycopg2.connect(url) as con, con.cursor() as cur:
        cur.execute("SELECT current_user, count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert cur.fetchone() == ("nx", 0)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(pg_server.url(password="wrong"))
    assert urlparse(url).hostname == "127.0.0.1"


def test_postgres_extension_installs_from_its_package():
    path = packaged_extension("postgres")
    assert path is not None and path.parent.name == f"v{duckdb.__version__}", path
    con = duckdb.connect()
    load_extension(con, "postgres")
    assert con.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = 'postgres_scanner'").fetchone() == (True,)


def test_concurrent_writers_on_a_postgres_catalog_lose_and_duplicate_nothing(pg_url, tmp_path):
    """Three processes race the catalog's creation and then rewrite disjoint partitions of one table;
    retrying DuckLake's conflict errors (and nothing else) leaves every partition exactly once."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    data_path = f"{tmp_path}/data/"
    procs = [ctx.Process(target=_writer, args=(pg_url, data_path, layer, 6, out)) for layer in range(3)]
    for p in procs:
        p.start()
    # A worker that met any error other than a conflict dies with it and sends nothing: get() times out.
    for _ in procs:
        out.get(timeout=400)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    con = _attach(pg_url, data_path)
    rows = con.execute("SELECT layer, part, count(*), count(DISTINCT i) FROM nx.acts GROUP BY ALL ORDER BY ALL").fetchall()
    assert rows == [(layer, part, 500, 500) for layer in range(3) for part in range(3)]
