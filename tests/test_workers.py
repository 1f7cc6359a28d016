"""Workers that share nothing but the servers (issue 12, point 3).

A single-process run (local data root, SQLite catalog) of every stage on every layer of a tiny checkpoint
is the reference. Then worker processes, each in its own empty working directory with its own TMPDIR and
NX_STATE, share only a real PostgreSQL server (the DuckLake catalog in one database, Dagster's instance,
deploy/dagster.yaml, in another) and the local S3 server (the Parquet data): they split the layers, each
running `nxd run --layers <its share>` over all stages, and the final tables equal the reference. One
worker is SIGKILLed (its process group) while its connections step runs: the other finishes,
a fresh worker re-executes the killed run from its failure through Dagster (`nxd retry RUN_ID`), then
runs what the killed worker had left, and the tables still equal the reference.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from nx_dagster.storage import Catalog
from nx_dagster.storage.schema import TABLES
from tests.checkpoints import tiny_run_inputs

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_YAML = ROOT / "deploy" / "dagster.yaml"
N_LAYER = 3
SHARES = ["0", "1-2"]  # worker i runs these layers
STAGE_FLAGS = ["--seq-len", "16", "--variants", "post_fix", "--explainer", "token_lookup", "--simulator", "token_lookup"]
BOUND_S = 400
# run-specific columns: wall-clock times, and `source`, which names the imported file (NULL here)
RUN_SPECIFIC = {"created_at", "source"}


class Worker:
    """A process in its own process group, working directory and TMPDIR; output collected line by line."""

    def __init__(self, env: dict, cwd: Path, argv: list[str]):
        cwd.mkdir(parents=True, exist_ok=True)
        (cwd / "tmp").mkdir(exist_ok=True)
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, *argv], env={**env, "TMPDIR": str(cwd / "tmp")}, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def tail(self) -> str:
        return "".join(self.lines[-40:])

    def finish(self, timeout: float = BOUND_S) -> str:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"worker did not finish within {timeout} s:\n{self.tail()}")
        time.sleep(0.2)
        assert self.proc.returncode == 0, self.tail()
        return "".join(self.lines)


def nxd(env: dict, cwd: Path, *args: str) -> Worker:
    return Worker(env, cwd, ["-m", "nxd", "run", *STAGE_FLAGS, *args])


def digests(home: str, catalog_url: str | None = None) -> dict[str, tuple[int, str]]:
    """Per table: row count and md5 over all rows (every column but the run-specific ones)."""
    cat = Catalog(home, catalog_url)
    out = {}
    for t in TABLES:
        cols = [c for c in cat.query(f"SELECT * FROM {t} LIMIT 0").column_names if c not in RUN_SPECIFIC]
        row = f"({', '.join(cols)})::VARCHAR"
        out[t] = tuple(cat.query(f"SELECT count(*), md5(coalesce(string_agg({row}, '|' ORDER BY {row}), '')) "
                                 f"FROM {t}").to_pylist()[0].values())
    return out


def base_env(ckpt: Path, corpus: Path) -> dict:
    drop = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "NX_HOME", "NX_CATALOG", "NX_STATE", "DAGSTER_HOME",
            "NX_DAGSTER_PG_URL", "NX_LLM_LEDGER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "NX_MODEL": str(ckpt), "NX_CORPUS": str(corpus), "PYTHONPATH": str(ROOT)}


def worker_env(shared: dict, cwd: Path) -> dict:
    """The shared settings plus this worker's own local state folder."""
    return {**shared, "NX_STATE": str(cwd / "state")}


def start_workers(shared: dict, prefix: Path) -> list[Worker]:
    """Every worker at once on the empty catalog, bucket and instance, each over all stages of its layers:
    they race on creating the tables, the `model` and `sequences` rows, the data root and the pools."""
    cwd = [Path(f"{prefix}{i}") for i in range(len(SHARES))]
    return [nxd(worker_env(shared, c), c, "--layers", share) for c, share in zip(cwd, SHARES)]


def step_started(instance: dg.DagsterInstance, worker: Worker, step: str):
    """Ready once a run of `worker`'s process has started `step`."""
    from dagster._core.events import DagsterEventType

    def ready() -> bool:
        for r in instance.get_run_records(dg.RunsFilter(tags={"nx/worker_pid": str(worker.proc.pid)})):
            if any(e.dagster_event.step_key == step
                   for e in instance.all_logs(r.dagster_run.run_id, of_type=DagsterEventType.STEP_START)):
                return True
        return False
    return ready


def open_instance(dagster_home: str) -> dg.DagsterInstance:
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(dagster_home))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_workers_sharing_only_the_servers_match_one_process_even_after_a_kill(pg_server, s3_server, tmp_path,
                                                                                monkeypatch):
    import uuid

    ckpt, corpus = tiny_run_inputs(tmp_path, 24, n_layer=N_LAYER)
    env = base_env(ckpt, corpus)

    # 1. the reference: one process, local data root, SQLite catalog, the root's own Dagster instance
    t0 = time.monotonic()
    ref_home = tmp_path / "reference"
    nxd({**env, "NX_HOME": str(ref_home)}, tmp_path / "ref_cwd").finish()
    reference_s = time.monotonic() - t0
    expected = digests(str(ref_home))
    for table in ("activation_records", "explanations", "scores", "connections"):
        if table in expected:
            assert expected[table][0] > 0, f"the reference run wrote no {table}"

    def shared_settings() -> tuple[dict, str, str]:
        """Fresh catalog and Dagster databases, a fresh bucket, a DAGSTER_HOME with deploy/dagster.yaml."""
        bucket = f"nx-{uuid.uuid4().hex[:12]}"
        s3_server.client().create_bucket(Bucket=bucket)
        home, catalog = f"s3://{bucket}/root", pg_server.create_database()
        dagster_home = tmp_path / f"dagster-{bucket}"
        dagster_home.mkdir()
        shutil.copy(DEPLOY_YAML, dagster_home / "dagster.yaml")
        dagster_url = pg_server.create_database().replace("postgresql://", "postgresql+psycopg2://")
        return ({**env, **s3_server.env(), "NX_HOME": home, "NX_CATALOG": catalog, "DAGSTER_HOME": str(dagster_home),
                 "NX_DAGSTER_PG_URL": dagster_url}, home, catalog)

    def tables(shared: dict, home: str, catalog: str) -> dict:
        with monkeypatch.context() as m:
            for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
                m.setenv(k, shared[k])
            m.setenv("NX_STATE", str(tmp_path / f"reader-{uuid.uuid4().hex[:6]}"))
            return digests(home, catalog)

    # 2. workers split the layers; nothing is shared but the PostgreSQL and S3 servers
    t1 = time.monotonic()
    shared, home, catalog = shared_settings()
    for w in start_workers(shared, tmp_path / "w"):
        w.finish()
    split_s = time.monotonic() - t1
    assert tables(shared, home, catalog) == expected

    # 3. the same with one worker killed mid-way; its run is re-executed from failure by a fresh worker
    t2 = time.monotonic()
    shared, home, catalog = shared_settings()
    monkeypatch.setenv("NX_DAGSTER_PG_URL", shared["NX_DAGSTER_PG_URL"])
    instance = open_instance(shared["DAGSTER_HOME"])
    survivor, victim = start_workers(shared, tmp_path / "k")
    ready = step_started(instance, victim, "connections")
    deadline = time.monotonic() + BOUND_S
    while not ready():
        assert victim.proc.poll() is None, f"the worker ended before its connections step:\n{victim.tail()}"
        assert time.monotonic() < deadline, f"no connections step within {BOUND_S} s:\n{victim.tail()}"
        time.sleep(0.05)
    time.sleep(1.0)
    assert victim.proc.poll() is None, "the worker ended before the kill"
    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    survivor.finish()

    # left STARTED, or already failed by the survivor's heartbeat (if the survivor waited for the victim's
    # compute slot, that is how it got it)
    killed = instance.get_run_records(dg.RunsFilter(tags={"nx/worker_pid": str(victim.proc.pid)},
                                                    statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.FAILURE]))
    assert len(killed) == 1, "the killed worker's run is not the one left unfinished"
    killed_id = killed[0].dagster_run.run_id
    fresh_cwd = tmp_path / "k2"
    out = Worker(worker_env(shared, fresh_cwd), fresh_cwd, ["-m", "nxd", "retry", killed_id]).finish()
    child_id = re.search(rf"done: run (\S+) re-executed {killed_id}", out).group(1)
    child = instance.get_run_by_id(child_id)
    assert child.parent_run_id == killed_id and child.status == dg.DagsterRunStatus.SUCCESS
    assert instance.get_run_by_id(killed_id).status == dg.DagsterRunStatus.FAILURE
    # what the killed worker never started: its explanations and scores
    nxd(worker_env(shared, fresh_cwd), fresh_cwd, "--layers", SHARES[1], "--stages", "explanations,scores").finish()
    kill_s = time.monotonic() - t2
    assert tables(shared, home, catalog) == expected
    instance.dispose()
    print(f"reference {reference_s:.0f} s; {len(SHARES)} workers {split_s:.0f} s; with a kill and re-execution {kill_s:.0f} s")
