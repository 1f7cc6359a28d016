"""A worker that dies while it holds a pool slot does not block the workers that wait for that slot
(assets/runtime/runs.py): a running `nxd` stamps its runs (`nx/worker_beat`) and sweeps on every heartbeat.
On this host a dead process is looked up; on another host its runs are dead once their stamp is older
than NX_WORKER_STALE_S. Real SQLite Dagster instance, real processes (a child that exited)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from assets.runtime import runs
from nx_dagster import procs
from nx_dagster.errors import NxInputError


@pytest.fixture
def instance(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path),
                              overrides={"concurrency": {"pools": {"default_limit": 1}}}) as inst:
        yield inst


def _dead_process() -> dict[str, str]:
    """The identity tags of a process of this host that ran and exited."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    ident = {"host": socket.gethostname(), "pid": str(child.pid), "start": procs.start_time(child.pid)}
    child.wait()
    return {runs.TAG_PREFIX + k: v for k, v in ident.items()}


def _holder(instance, tags: dict[str, str], pool: str = "compute") -> str:
    """A STARTED run with `tags` that holds the pool's only slot for its step."""
    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="nxd_run", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=tags))
    runs.ensure_pools(instance, [pool])
    status = instance.event_log_storage.claim_concurrency_slot(pool, run_id, "activations")
    assert status.is_claimed
    return run_id


def _wait(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_slot_held_by_a_worker_that_dies_while_another_waits_is_given_back(instance, monkeypatch):
    """The waiting process's heartbeat (every 0.2 s here) sees the holder's process gone: the run is
    failed with the reason, its slot is free, and the waiting step can claim it."""
    monkeypatch.setenv("NX_WORKER_BEAT_S", "0.2")
    storage = instance.event_log_storage
    with runs.Heartbeat(instance) as heartbeat:
        holder = _holder(instance, _dead_process())  # dies after this process's run started
        waiting = str(uuid.uuid4())
        assert storage.claim_concurrency_slot("compute", waiting, "connections").is_claimed is False
        assert _wait(lambda: instance.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE)
        assert _wait(lambda: storage.claim_concurrency_slot("compute", waiting, "connections").is_claimed)
        assert heartbeat.beats >= 1
    failure = [e for e in instance.all_logs(holder) if e.dagster_event and e.dagster_event.is_run_failure]
    assert len(failure) == 1 and "is gone" in failure[0].dagster_event.message


def test_runs_of_another_host_are_dead_once_their_heartbeat_is_stale(instance, monkeypatch):
    monkeypatch.setenv("NX_WORKER_STALE_S", "30")
    other = {runs.TAG_PREFIX + "host": "another-host.example", runs.TAG_PREFIX + "pid": "4242",
             runs.TAG_PREFIX + "start": "123"}
    fresh = _holder(instance, {**other, runs.BEAT_TAG: f"{time.time() - 5:.3f}"}, pool="p_fresh")
    stale = _holder(instance, {**other, runs.BEAT_TAG: f"{time.time() - 31:.3f}"}, pool="p_stale")
    assert runs.sweep(instance) == {"failed": [stale], "freed": [stale]}
    assert instance.get_run_by_id(fresh).status == dg.DagsterRunStatus.STARTED
    assert instance.event_log_storage.get_concurrency_run_ids() == {fresh}
    message = next(e.dagster_event.message for e in instance.all_logs(stale)
                   if e.dagster_event and e.dagster_event.is_run_failure)
    assert "another-host.example" in message and "over 30 s" in message


def test_the_heartbeat_stamps_this_process_s_unfinished_runs_only(instance, monkeypatch):
    """A live run of this process gets newer stamps and is never swept; a finished one keeps its stamp."""
    monkeypatch.setenv("NX_WORKER_BEAT_S", "0.1")
    mine = runs.worker_tags()
    live, done = str(uuid.uuid4()), str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="nxd_run", run_id=live, status=dg.DagsterRunStatus.STARTED, tags=mine))
    instance.add_run(DagsterRun(job_name="nxd_run", run_id=done, status=dg.DagsterRunStatus.SUCCESS, tags=mine))
    with runs.Heartbeat(instance):
        assert _wait(lambda: float(instance.get_run_by_id(live).tags[runs.BEAT_TAG]) > float(mine[runs.BEAT_TAG]))
        time.sleep(0.3)
    assert instance.get_run_by_id(live).status == dg.DagsterRunStatus.STARTED
    assert instance.get_run_by_id(done).tags[runs.BEAT_TAG] == mine[runs.BEAT_TAG]


@pytest.mark.parametrize("env", [{"NX_WORKER_BEAT_S": "soon"}, {"NX_WORKER_BEAT_S": "0"},
                                 {"NX_WORKER_STALE_S": "-1"}, {"NX_WORKER_BEAT_S": "30", "NX_WORKER_STALE_S": "45"}])
def test_bad_heartbeat_settings_are_one_line_naming_the_setting(env, instance, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(NxInputError) as e:
        runs.Heartbeat(instance)
    assert str(e.value).startswith("NX_WORKER_") and "Fix: " in str(e.value) and "\n" not in str(e.value)
