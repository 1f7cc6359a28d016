"""`nxd retry`: a killed `nxd run` is re-executed from its failure by Dagster (issue 12, point 3).

A run killed while its activations step runs is marked failed by `nxd retry`, which re-executes its
failed steps as a child run (Dagster's re-execution from failure, the job rebuilt from the run's
`nx/run` tag); the tables then equal those of a run that was never killed. Runs that cannot be retried
(unknown, succeeded) are named errors.
"""

import json
import re
import subprocess
import sys

import dagster as dg
import pytest

from tests.checkpoints import tiny_run_inputs
from tests.test_kill_recovery import Nxd, _open, digests, env_for, step_started


def nxd(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nxd", *args], env=env, cwd=env["NX_CWD"],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_run_is_retried_from_its_failure(tmp_path):
    ckpt, corpus = tiny_run_inputs(tmp_path, 120)
    clean_env = env_for(tmp_path, "clean", ckpt, corpus)
    env = env_for(tmp_path, "killed", ckpt, corpus)
    instance = _open(env["DAGSTER_HOME"])
    clean = Nxd(clean_env, "--stages", "activations,connections")

    victim = Nxd(env, "--stages", "activations,connections")
    victim.kill_when(step_started(instance, "activations"), "while activations run", 0.3)
    killed = instance.get_run_records(dg.RunsFilter(tags={"nx/worker_pid": str(victim.proc.pid)}), limit=1)[0]
    killed_id = killed.dagster_run.run_id
    assert killed.dagster_run.status == dg.DagsterRunStatus.STARTED
    assert json.loads(killed.dagster_run.tags["nx/run"])["selection"] == ["post_fix/activations"]

    done = nxd(env, "retry", killed_id)
    assert done.returncode == 0, done.stderr[-3000:]
    child = instance.get_run_by_id(re.search(rf"done: run (\S+) re-executed {killed_id}", done.stderr).group(1))
    assert child.parent_run_id == killed_id and child.root_run_id == killed_id
    assert child.status == dg.DagsterRunStatus.SUCCESS and child.tags["nx/run"] == killed.dagster_run.tags["nx/run"]
    assert instance.get_run_by_id(killed_id).status == dg.DagsterRunStatus.FAILURE  # swept by the retry
    assert child.tags["dagster/asset_partition_range_start"] == killed.dagster_run.tags["dagster/asset_partition_range_start"]

    # what the killed `nxd run` never reached
    rest = nxd(env, "run", "--seq-len", "16", "--variants", "post_fix", "--stages", "connections")
    assert rest.returncode == 0, rest.stderr[-3000:]
    clean.finish()
    assert digests(tmp_path / "killed") == digests(tmp_path / "clean")

    # runs that cannot be retried: named, nothing run
    again = nxd(env, "retry", child.run_id)
    assert again.returncode == 2 and "succeeded: there is nothing to retry" in again.stderr
    unknown = nxd(env, "retry", "0000-not-a-run")
    assert unknown.returncode == 2 and "is not in this data root's run history" in unknown.stderr
    nowhere = nxd(env, "retry", "--home", str(tmp_path / "no-root"), killed_id)
    assert nowhere.returncode == 2 and "holds no catalog" in nowhere.stderr
    assert not (tmp_path / "no-root").exists()  # a bad --home creates nothing
    instance.dispose()
