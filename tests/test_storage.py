"""The catalog: partition replace is idempotent, parallel writers all land, a killed write changes nothing;
the same tests with the catalog in SQLite (embedded) and in PostgreSQL (`catalog_db`)."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import textwrap

import pyarrow as pa
import pytest

from nx_dagster.errors import NxInputError
from nx_dagster.storage import Catalog


def stats_rows(layer: int, n: int, value: float) -> pa.Table:
    return pa.table({"model": ["m"] * n, "gelu_variant": ["post_fix"] * n, "layer": pa.array([layer] * n, pa.int32()),
                     "neuron": pa.array(range(n), pa.int32()), "mean": [value] * n})


@pytest.mark.usefixtures("catalog_db")
def test_replace_is_idempotent_and_snapshotted(tmp_path):
    cat = Catalog(tmp_path)
    keys = {"model": "m", "gelu_variant": "post_fix", "layer": 0}
    s1 = cat.replace("neuron_stats", stats_rows(0, 5, 1.0), keys)
    s2 = cat.replace("neuron_stats", stats_rows(0, 5, 2.0), keys)
    assert s2 > s1
    assert cat.query("SELECT count(*), min(mean) FROM neuron_stats").to_pylist() == [{"count_star()": 5, "min(mean)": 2.0}]
    # time travel: the first snapshot still holds the first values
    old = cat.query(f"SELECT DISTINCT mean FROM neuron_stats AT (VERSION => {s1})").column(0).to_pylist()
    assert old == [1.0]


@pytest.mark.usefixtures("catalog_db")
def test_replace_many_is_one_transaction(tmp_path):
    cat = Catalog(tmp_path)
    bad = pa.table({"model": ["m"], "layer": pa.array(["not-an-int"])})
    with pytest.raises(Exception):
        cat.replace_many([("neuron_stats", stats_rows(0, 3, 1.0), {"model": "m"}),
                          ("activation_records", bad, {"model": "m"})])
    assert cat.query("SELECT count(*) FROM neuron_stats").column(0)[0].as_py() == 0


def _writer(home: str, layer: int, barrier) -> None:
    barrier.wait()
    Catalog(home).replace("neuron_stats", stats_rows(layer, 50, float(layer)),
                          {"model": "m", "gelu_variant": "post_fix", "layer": layer})


@pytest.mark.usefixtures("catalog_db")
def test_parallel_processes_all_land(tmp_path):
    Catalog(tmp_path).connect().close()  # create the catalog first
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), layer, barrier)) for layer in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = Catalog(tmp_path).query("SELECT layer, count(*) AS n FROM neuron_stats GROUP BY layer ORDER BY layer")
    assert rows.to_pylist() == [{"layer": i, "n": 50} for i in range(4)]


@pytest.mark.usefixtures("catalog_db")
def test_killed_writer_leaves_previous_state(tmp_path):
    cat = Catalog(tmp_path)
    keys = {"model": "m", "gelu_variant": "post_fix", "layer": 0}
    cat.replace("neuron_stats", stats_rows(0, 4, 1.0), keys)
    script = textwrap.dedent(f"""
        import time, pyarrow as pa
        from nx_dagster.storage import Catalog
        from tests.test_storage import stats_rows
        def rows():
            yield stats_rows(0, 4, 9.0)
            print("staged", flush=True)
            time.sleep(60)
            yield stats_rows(0, 4, 9.0)
        Catalog({str(tmp_path)!r}).replace("neuron_stats", rows(), {keys!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    assert proc.stdout.readline().strip() == "staged"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert cat.query("SELECT DISTINCT mean FROM neuron_stats").column(0).to_pylist() == [1.0]
    cat.replace("neuron_stats", stats_rows(0, 4, 3.0), keys)  # the lock died with the process
    assert cat.query("SELECT count(*) FROM neuron_stats").column(0)[0].as_py() == 4


def test_unwritable_home_is_named(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    with pytest.raises(NxInputError, match="NX_HOME") as e:
        Catalog(ro / "file").check_writable()
    assert "Fix:" in str(e.value)


@pytest.mark.usefixtures("catalog_db")
def test_two_nxd_runs_at_once_both_land(tmp_path):
    from tests.checkpoints import build_checkpoint

    ckpt = build_checkpoint(tmp_path / "ckpt", n_layer=2, n_embd=32, n_head=4)
    corpus = tmp_path / "c.txt"
    corpus.write_text("alpha beta gamma delta epsilon. " * 300)
    env = {**os.environ, "NX_HOME": str(tmp_path / "home"), "NX_MODEL": str(ckpt), "NX_CORPUS": str(corpus),
           "DAGSTER_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "nxd", "run", "--stages", "activations", "--variants", "post_fix",
           "--seq-len", "16", "--layers"]
    procs = [subprocess.Popen([*cmd, str(layer)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for layer in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = Catalog(tmp_path / "home").query(
        "SELECT layer, count(*) AS n FROM neuron_stats GROUP BY layer ORDER BY layer").to_pylist()
    assert rows == [{"layer": 0, "n": 128}, {"layer": 1, "n": 128}]
    assert Catalog(tmp_path / "home").query("SELECT count(*) FROM models").column(0)[0].as_py() == 1


def _tree(root) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.usefixtures("catalog_db")
def test_nxd_sql_reads_without_writing(tmp_path, capsys):
    """`nxd sql` attaches the catalog read-only: nothing under NX_HOME changes, writes are refused."""
    from nxd.cli import main

    cat = Catalog(tmp_path)
    cat.replace("neuron_stats", stats_rows(0, 5, 1.0), {"model": "m", "gelu_variant": "post_fix", "layer": 0})
    before = _tree(tmp_path)
    assert main(["sql", "--home", str(tmp_path), "--format", "json", "SELECT count(*) AS n FROM neuron_stats"]) == 0
    assert capsys.readouterr().out.strip() == '[{"n": 5}]'
    assert main(["sql", "--home", str(tmp_path), "DELETE FROM neuron_stats"]) == 2
    assert "read-only" in capsys.readouterr().err
    assert main(["sql", "--home", str(tmp_path), "SELEC 1"]) == 2
    assert "syntax error" in capsys.readouterr().err
    assert _tree(tmp_path) == before
    assert cat.query("SELECT count(*) FROM neuron_stats").column(0)[0].as_py() == 5


def test_nxd_sql_on_an_empty_home_is_clear(tmp_path, capsys):
    from nxd.cli import main

    empty = tmp_path / "nothing-here"
    assert main(["sql", "--home", str(empty), "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert "holds no catalog yet" in err and "nxd run" in err
    assert not empty.exists()
