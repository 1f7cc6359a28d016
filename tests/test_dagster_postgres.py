"""Dagster on PostgreSQL (issue 12, point 2): deploy/dagster.yaml puts the instance's run, event-log and
schedule storage on a real PostgreSQL server, so runs of every process appear in one history and the
concurrency pools hold across processes (as they would across machines: nothing but the server is shared).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
from dagster._core.events import DagsterEventType

from tests.checkpoints import tiny_run_inputs

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_YAML = ROOT / "deploy" / "dagster.yaml"


def _env(tmp: Path, dagster_url: str, ckpt: Path, corpus: Path) -> dict:
    home = tmp / "dagster_home"
    if not home.exists():
        home.mkdir()
        shutil.copy(DEPLOY_YAML, home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return {**env, "DAGSTER_HOME": str(home), "NX_DAGSTER_PG_URL": dagster_url.replace("postgresql://", "postgresql+psycopg2://"), "NX_HOME": str(tmp / "nx_data"),
            "NX_MODEL": str(ckpt), "NX_CORPUS": str(corpus), "PYTHONPATH": str(ROOT)}


def _nxd(env: dict, cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nxd", "run", "--seq-len", "16", "--variants", "post_fix", *args],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _instance(dagster_home: str) -> dg.DagsterInstance:
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(dagster_home))


@pytest.mark.slow
def test_runs_of_two_processes_share_one_postgres_instance_and_its_pools(pg_server, tmp_path, monkeypatch):
    """Two `nxd run`s in separate processes and working directories record layers 0 and 1 at once. Both
    runs land in the PostgreSQL-backed history that a third process (this test) reads, and their
    `compute`-pool steps (limit 1) never overlap: the pool's slots are in the shared database."""
    ckpt, corpus = tiny_run_inputs(tmp_path, 60)
    dagster_url = pg_server.create_database()
    env = _env(tmp_path, dagster_url, ckpt, corpus)
    workers = []
    for layer in (0, 1):
        cwd = tmp_path / f"worker{layer}"
        cwd.mkdir()
        workers.append(_nxd({**env, "TMPDIR": str(cwd)}, cwd, "--stages", "activations", "--layers", str(layer)))
    for w in workers:
        out, _ = w.communicate(timeout=600)
        assert w.returncode == 0, out[-4000:]
    monkeypatch.setenv("NX_DAGSTER_PG_URL", env["NX_DAGSTER_PG_URL"])

    instance = _instance(env["DAGSTER_HOME"])
    with instance:
        from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        records = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
        pids = {r.dagster_run.tags["nx/worker_pid"] for r in records}
        assert pids == {str(w.pid) for w in workers}
        ranges = {(r.dagster_run.tags.get("dagster/asset_partition_range_start"), r.dagster_run.run_id)
                  for r in records}
        assert {start for start, _ in ranges} >= {"0", "1"}

        intervals = []  # (start, end, run) of every step in the compute pool
        for r in records:
            starts, ends = {}, {}
            for e in instance.all_logs(r.dagster_run.run_id):
                ev = e.dagster_event
                if ev is None or not ev.step_key or "activations" not in ev.step_key:
                    continue
                if ev.event_type == DagsterEventType.STEP_START:
                    starts[ev.step_key] = e.timestamp
                elif ev.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                    ends[ev.step_key] = e.timestamp
            intervals += [(starts[k], ends[k], r.dagster_run.run_id) for k in starts]
        assert len({run for *_, run in intervals}) == 2 and len(intervals) == 2  # one step per layer (post_fix)
        intervals.sort()
        for (_, end, _), (start, _, _) in zip(intervals, intervals[1:]):
            assert start >= end, "two compute-pool steps ran at once"
        assert not instance.event_log_storage.get_concurrency_run_ids()  # every slot given back

    with psycopg2.connect(dagster_url) as con, con.cursor() as cur:  # the history is in the server itself
        cur.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        assert cur.fetchone()[0] == len(records)


@pytest.mark.parametrize("case", ["unset", "unreachable", "wrong_password", "no_database"])
def test_bad_instance_storage_is_one_line_naming_the_setting(case, pg_server, tmp_path, monkeypatch):
    """deploy/dagster.yaml with its URL unset or pointing at a server that refuses: a clear NxInputError
    before any table changes, naming the instance file and what the server said."""
    from assets.runtime.instance import open_instance
    from nx_dagster.errors import NxInputError
    from nx_dagster.storage import Catalog

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    url = pg_server.create_database().replace("postgresql://", "postgresql+psycopg2://")
    bad = {"unset": None, "unreachable": url.replace(f":{pg_server.port}/", ":1/"),
           "wrong_password": url.replace(f":{pg_server.password}@", ":wrong@"),
           "no_database": url.rsplit("/", 1)[0] + "/no_such_db"}[case]
    if bad is None:
        monkeypatch.delenv("NX_DAGSTER_PG_URL", raising=False)
    else:
        monkeypatch.setenv("NX_DAGSTER_PG_URL", bad)
    catalog = Catalog(tmp_path / "nx_data")
    with pytest.raises(NxInputError) as info:
        open_instance(catalog)
    message = str(info.value)
    assert str(home / "dagster.yaml") in message and "Fix:" in message and "\n" not in message
    expected = {"unset": "reads NX_DAGSTER_PG_URL, which is not set", "unreachable": "Connection refused",
                "wrong_password": "password authentication failed", "no_database": 'database "no_such_db" does not exist'}
    assert expected[case] in message


def test_pools_made_by_several_processes_at_once_have_one_limit_and_no_failed_run(pg_server, tmp_path, monkeypatch):
    """Dagster creates a pool on a run's first claim; on PostgreSQL two processes that do so at one moment
    collide and the loser's run fails (the CI failure of the test above: InFailedSqlTransaction).
    `runs.ensure_pools` from four instances at once (a barrier starts them together), for 12 new pools:
    no error, and each pool has the default limit and exactly that many slots."""
    import threading

    from assets.runtime import runs

    env = _env(tmp_path, pg_server.create_database(), tmp_path, tmp_path)
    monkeypatch.setenv("NX_DAGSTER_PG_URL", env["NX_DAGSTER_PG_URL"])
    instances = [_instance(env["DAGSTER_HOME"]) for _ in range(4)]
    for inst in instances:
        inst.get_runs(limit=1)
    errors = []
    for k in range(12):
        barrier = threading.Barrier(len(instances))

        def make(inst, key=f"pool{k}", barrier=barrier):
            barrier.wait()
            try:
                runs.ensure_pools(inst, [key])
            except Exception as e:  # noqa: BLE001  (collected and asserted below)
                errors.append(repr(e))

        threads = [threading.Thread(target=make, args=(inst,)) for inst in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        info = instances[0].event_log_storage.get_concurrency_info(f"pool{k}")
        assert (info.limit, info.slot_count) == (1, 1), k
    assert not errors, errors[:2]
    for inst in instances:
        inst.dispose()

    # the instance's default limit changed since the pools were made: Dagster alone fails every run that
    # claims such a pool on PostgreSQL (dagster-io/dagster#33552); ensure_pools gives them the new limit
    yaml = Path(env["DAGSTER_HOME"]) / "dagster.yaml"
    yaml.write_text(yaml.read_text().replace("default_limit: 1", "default_limit: 2"))
    with _instance(env["DAGSTER_HOME"]) as inst:
        assert inst.global_op_concurrency_default_limit == 2
        assert runs.ensure_pools(inst, ["pool0", "pool1"]) == ["pool0", "pool1"]
        for key in ("pool0", "pool1"):
            info = inst.event_log_storage.get_concurrency_info(key)
            assert (info.limit, info.slot_count) == (2, 2), key
        assert runs.ensure_pools(inst, ["pool0"]) == []  # nothing left to do
