"""The catalog in PostgreSQL (`NX_CATALOG=postgresql://…`) against the real server of tests/pg_server.py:
bad settings each stop with one line naming NX_CATALOG before any work (and never print the password);
a database without the catalog schema is "no catalog yet" for readers; a catalog of an incompatible
DuckLake version is named as such; a run and a release on the PostgreSQL catalog read back from another
process."""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from nxd.cli import main
from nx_dagster.storage import Catalog
from tests.test_storage import stats_rows

ROOT = Path(__file__).resolve().parent.parent


def _with(url: str, **parts) -> str:
    u = urlsplit(url)
    user, password, port, path = u.username, parts.get("password", u.password), parts.get("port", u.port), \
        parts.get("path", u.path)
    return urlunsplit((u.scheme, f"{user}:{password}@{u.hostname}:{port}", path, "", ""))


def test_bad_catalog_settings_are_one_line_before_any_work(pg_url, tmp_path, monkeypatch, capsys):
    password = urlsplit(pg_url).password
    cases = [
        (_with(pg_url, password="not-the-password"), ["refused the credentials", "password authentication failed"]),
        (_with(pg_url, path="/no_such_db"), ["does not exist", "no_such_db"]),
        (_with(pg_url, port=1), ["cannot be reached"]),
    ]
    for url, words in cases:
        monkeypatch.setenv("NX_CATALOG", url)
        home = tmp_path / f"home{len(words)}{urlsplit(url).port}"
        assert main(["run", "--home", str(home), "--stages", "activations", "--max-sequences", "8"]) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("nxd: error:")]
        assert len(lines) == 1 and "NX_CATALOG" in lines[0] and "Fix:" in lines[0], err
        assert all(w in lines[0] for w in words), (words, lines[0])
        assert password not in err and "not-the-password" not in err  # secrets never reach the output
        assert not (home / "data").exists() or not any((home / "data").rglob("*.parquet"))
    # a database that holds no catalog: readers are told so, nothing is created there
    monkeypatch.setenv("NX_CATALOG", pg_url)
    assert main(["sql", "--home", str(tmp_path / "empty"), "SELECT 1"]) == 2
    assert "holds no catalog yet" in capsys.readouterr().err
    with psycopg2.connect(pg_url) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert cur.fetchone()[0] == 0


def test_a_catalog_of_another_ducklake_version_is_named(pg_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NX_CATALOG", pg_url)
    Catalog(tmp_path).replace("neuron_stats", stats_rows(0, 3, 1.0), {"model": "m", "layer": 0})
    with psycopg2.connect(pg_url) as con, con.cursor() as cur:
        cur.execute("UPDATE ducklake_metadata SET value = '0.0.1' WHERE key = 'version'")
        assert cur.rowcount == 1
    assert main(["sql", "--home", str(tmp_path), "SELECT count(*) FROM neuron_stats"]) == 2
    err = capsys.readouterr().err
    assert "NX_CATALOG" in err and "version" in err and "Fix:" in err, err


@pytest.mark.slow
def test_a_run_and_a_release_on_postgres_read_back_from_another_process(pg_url, tmp_path, monkeypatch):
    from tests.checkpoints import build_checkpoint

    ck = build_checkpoint(tmp_path / "ck", n_layer=2, n_embd=32, n_head=4)
    corpus = tmp_path / "c.txt"
    corpus.write_text("alpha beta gamma delta epsilon. " * 200)
    monkeypatch.setenv("NX_CATALOG", pg_url)
    home = tmp_path / "home"
    assert main(["run", "--home", str(home), "--model", str(ck), "--corpus", str(corpus), "--seq-len", "16",
                 "--stages", "activations,connections"]) == 0
    assert main(["release", "--home", str(home), "r1"]) == 0
    assert not (home / "catalog.sqlite").exists()  # the metadata went to PostgreSQL
    env = {**os.environ, "NX_CATALOG": pg_url}
    out = subprocess.run([sys.executable, "-m", "nxd", "sql", "--home", str(home), "--release", "r1",
                          "--format", "json", "SELECT (SELECT count(*) FROM neuron_stats) AS stats, "
                          "(SELECT count(*) FROM neuron_connections) AS conn"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)[0]
    assert row["stats"] == 2 * 2 * 128 and row["conn"] > 0


def _same_partition(home: str, state: str, barrier) -> None:
    os.environ["NX_STATE"] = state  # each process its own local state: machines that share no lock file
    barrier.wait()
    Catalog(home).replace("neuron_stats", stats_rows(0, 50, 1.0), {"model": "m", "gelu_variant": "post_fix", "layer": 0})


def test_writers_on_several_machines_of_one_new_partition_store_it_once(pg_url, s3_home, tmp_path, monkeypatch):
    """Writers that share only PostgreSQL and the bucket all replace the same partition of an empty table at
    once: DuckLake alone would let each plain INSERT commit (the partition held nothing to delete); the
    PostgreSQL writer lock makes them take turns, so the partition is stored exactly once."""
    import multiprocessing as mp

    monkeypatch.setenv("NX_CATALOG", pg_url)
    Catalog(s3_home).connect().close()  # the catalog and its (empty) tables
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_same_partition, args=(s3_home, str(tmp_path / f"machine{i}"), barrier))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    assert Catalog(s3_home).query("SELECT count(*) FROM neuron_stats").column(0)[0].as_py() == 50
