"""The catalog under stress (issue 11, points 2 and 4): more writers than cores on a busy machine all
land; past NX_CATALOG_WAIT_S a writer fails with an error naming it; a full disk is said plainly and
leaves no file behind; `nxd gc` finds and removes files no snapshot references."""

import multiprocessing as mp
import os
import subprocess
import textwrap
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from nxd.cli import main
from nx_dagster.storage import Catalog
from nx_dagster.storage.catalog import CatalogBusy, DiskFull
from tests.test_storage import stats_rows

WRITERS, COMMITS = 5, 3


def _burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _writer(home: str, writer: int, barrier) -> None:
    barrier.wait()
    cat = Catalog(home)
    for i in range(COMMITS):
        layer = writer * COMMITS + i
        cat.replace("neuron_stats", stats_rows(layer, 300, float(layer)),
                    {"model": "m", "gelu_variant": "post_fix", "layer": layer})
        cat.query("SELECT count(*) FROM neuron_stats")  # readers attach while others commit


@pytest.mark.slow
def test_more_writers_than_cores_on_a_busy_machine_all_land(tmp_path):
    Catalog(tmp_path).connect().close()
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    burners = [ctx.Process(target=_burn, args=(stop,)) for _ in range(os.cpu_count() or 2)]
    barrier = ctx.Barrier(WRITERS)
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), w, barrier)) for w in range(WRITERS)]
    for p in burners + writers:
        p.start()
    try:
        for p in writers:
            p.join(600)
    finally:
        stop.set()
        for p in burners:
            p.join(10)
    assert [p.exitcode for p in writers] == [0] * WRITERS
    rows = Catalog(tmp_path).query("SELECT layer, count(*) AS n FROM neuron_stats GROUP BY layer ORDER BY layer")
    assert rows.to_pylist() == [{"layer": i, "n": 300} for i in range(WRITERS * COMMITS)]


def test_a_writer_waits_up_to_the_bound_then_names_it(tmp_path, monkeypatch):
    cat = Catalog(tmp_path)
    keys = {"model": "m", "gelu_variant": "post_fix", "layer": 0}
    cat.replace("neuron_stats", stats_rows(0, 4, 1.0), keys)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from nx_dagster.storage import Catalog
        with Catalog({str(tmp_path)!r}).writer_lock():
            print("holding", flush=True)
            time.sleep(6)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    monkeypatch.setenv("NX_CATALOG_WAIT_S", "1")
    t0 = time.monotonic()
    with pytest.raises(CatalogBusy, match="NX_CATALOG_WAIT_S=1") as e:
        cat.replace("neuron_stats", stats_rows(0, 4, 2.0), keys)
    assert 0.9 < time.monotonic() - t0 < 5 and "Fix:" in str(e.value)
    folder = tmp_path / "data" / "main" / "neuron_stats"
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 1  # the refused write removed the file it had written before waiting
    monkeypatch.setenv("NX_CATALOG_WAIT_S", "60")  # a longer bound: it waits its turn and lands
    import threading

    waiter = threading.Thread(target=cat.replace, args=("neuron_stats", stats_rows(0, 4, 3.0), keys))
    waiter.start()
    # the partition's Parquet is written while the other process still holds the lock: only the
    # commit (metadata) waits for it
    deadline = time.monotonic() + 20
    while len(list(folder.iterdir())) == 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert holder.poll() is None and waiter.is_alive(), "the lock was released before the file was written"
    assert len(list(folder.iterdir())) == 2
    waiter.join(60)
    assert holder.wait(30) == 0
    assert cat.query("SELECT DISTINCT mean FROM neuron_stats").column(0).to_pylist() == [3.0]
    monkeypatch.setenv("NX_CATALOG_WAIT_S", "soon")
    with pytest.raises(Exception, match="NX_CATALOG_WAIT_S 'soon'"):
        cat.replace("neuron_stats", stats_rows(0, 4, 4.0), keys)


@pytest.mark.slow
def test_readers_and_writers_wait_out_a_long_commit(tmp_path, monkeypatch):
    """Another process holds the catalog database itself (as a long commit does): within the bound
    readers and writers wait and succeed; past it they fail with CatalogBusy, not "database is locked".
    (Each attempt already waits ~5 s in SQLite's busy handler before "database is locked".)"""
    cat = Catalog(tmp_path)
    keys = {"model": "m", "gelu_variant": "post_fix", "layer": 0}
    cat.replace("neuron_stats", stats_rows(0, 4, 1.0), keys)
    hold = textwrap.dedent(f"""
        import sqlite3, time
        con = sqlite3.connect({str(cat.catalog_path)!r}, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        print("holding", flush=True)
        time.sleep(float(__import__("sys").argv[1]))
        con.execute("COMMIT")
    """)
    monkeypatch.setenv("NX_CATALOG_WAIT_S", "1")
    holder = subprocess.Popen([sys.executable, "-c", hold, "16"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    with pytest.raises(CatalogBusy, match="NX_CATALOG_WAIT_S=1"):
        cat.replace("neuron_stats", stats_rows(0, 4, 2.0), keys)
    with pytest.raises(CatalogBusy, match="NX_CATALOG_WAIT_S=1"):
        cat.query("SELECT count(*) FROM neuron_stats")
    assert holder.wait(30) == 0
    monkeypatch.setenv("NX_CATALOG_WAIT_S", "60")
    holder = subprocess.Popen([sys.executable, "-c", hold, "12"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    t0 = time.monotonic()
    cat.replace("neuron_stats", stats_rows(0, 4, 3.0), keys)
    assert cat.query("SELECT DISTINCT mean FROM neuron_stats").column(0).to_pylist() == [3.0]
    assert time.monotonic() - t0 > 5  # it did wait for the holder
    assert holder.wait(30) == 0


@pytest.fixture()
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting an 8 MB tmpfs needs root (mount -t tmpfs); no size-limited folder to test on")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _noise(layer: int, n: int) -> pa.Table:
    rng = np.random.default_rng(layer)
    return pa.table({"model": ["m"] * n, "gelu_variant": ["post_fix"] * n, "layer": pa.array([layer] * n, pa.int32()),
                     "neuron": pa.array(range(n), pa.int32()), "mean": rng.random(n),
                     "quantile_boundaries": pa.array(list(rng.random((n, 4))), pa.list_(pa.float64()))})


def test_full_disk_is_said_plainly_and_leaves_nothing(small_disk, capsys):
    home = small_disk / "home"
    cat = Catalog(home)
    keys = {"model": "m", "gelu_variant": "post_fix", "layer": 0}
    cat.replace("neuron_stats", _noise(0, 20_000), keys)  # a real Parquet file (not inlined)
    before = _files(home)
    for staged in (False, True):  # a table written directly, and one staged to Parquet first
        rows = _noise(1, 300_000)  # ~12 MB of random doubles: more than the disk holds
        with pytest.raises(DiskFull, match="disk full") as e:
            cat.replace("neuron_stats", iter([rows]) if staged else rows, keys)
        assert "nxd gc" in str(e.value) and "permission" not in str(e.value)
        assert _files(home) == before  # no Parquet, staging or probe file left behind
    assert cat.query("SELECT count(*) FROM neuron_stats").column(0)[0].as_py() == 20_000
    filler = small_disk / "filler"
    with open(filler, "wb") as fh, pytest.raises(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    with pytest.raises(DiskFull, match="disk full"):
        cat.check_writable()
    assert _files(home) == before
    filler.unlink()
    assert main(["gc", "--home", str(home)]) == 0
    assert "0 unreferenced" in capsys.readouterr().err


def test_gc_lists_then_removes_only_unreferenced_files(tmp_path, capsys):
    cat = Catalog(tmp_path)
    cat.replace("neuron_stats", _noise(0, 5_000), {"model": "m", "layer": 0})
    kept = _files(tmp_path)
    folder = tmp_path / "data" / "main" / "neuron_stats"
    (folder / "ducklake-left-by-a-kill.parquet").write_bytes(b"x" * 1000)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "staging" / f"{dead.pid}-1-abc").mkdir(parents=True)
    (tmp_path / "staging" / f"{dead.pid}-1-abc" / "part-000000.parquet").write_bytes(b"y" * 500)
    (tmp_path / f".write-probe-{dead.pid}").write_text("ok")
    me = f"{os.getpid()}-{__import__('nx_dagster.procs').procs.start_time(os.getpid())}"
    live = tmp_path / "staging" / f"{me}-x"
    live.mkdir()  # a staging folder of a live process is never touched
    # a partition file written before its commit: spared while its writer runs, removed once it is gone
    waiting = folder / f"nx-{me}-0123abcd.parquet"
    waiting.write_bytes(b"z" * 300)
    (folder / f"nx-{dead.pid}-1-4567ef.parquet").write_bytes(b"w" * 200)
    planted = set(_files(tmp_path)) - set(kept)
    assert main(["gc", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.count("would remove") == 4 and "1,000 bytes" in out.out and "(run with --apply)" in out.err
    assert waiting.name not in out.out and f"nx-{dead.pid}-1-4567ef.parquet" in out.out
    assert set(_files(tmp_path)) - set(kept) == planted  # a dry run removes nothing
    assert main(["gc", "--home", str(tmp_path), "--apply"]) == 0
    assert capsys.readouterr().out.count("removed") == 4
    assert set(_files(tmp_path)) - set(kept) == {waiting.relative_to(tmp_path).as_posix()} and live.is_dir()
    assert cat.query("SELECT count(*) FROM neuron_stats").column(0)[0].as_py() == 5_000
