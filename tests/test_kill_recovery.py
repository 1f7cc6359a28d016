"""A killed `nxd run` never blocks the next one (issue 11, point 1).

`nxd run` is SIGKILLed (its whole process group) at several points across the stages, one after the
other on the same data root and Dagster instance (whose pools allow one step at a time, as the
project's dagster.yaml does): while a step holds the `compute` pool (sequences, activations,
connections), while Parquet is being staged and committed, and while a step holds the `llm` pool
(explanations, scores). Each next `nxd run` must get past the dead run's slot by itself, and the
final uninterrupted rerun must finish within a bound and leave tables equal to those of a run that
was never killed.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from nx_dagster.storage import Catalog
from nx_dagster.storage.cleanup import collect
from nx_dagster.storage.schema import TABLES
from tests.checkpoints import tiny_run_inputs

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 300  # a rerun finishes well within this, or it is stuck (before the fix: forever)
POOLS = "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"


class Nxd:
    """`nxd run ...` in its own process group, its output collected line by line."""

    def __init__(self, env: dict, *args: str):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nxd", "run", "--seq-len", "16", "--variants", "post_fix", *args],
            env=env, cwd=env["NX_CWD"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def kill_when(self, ready, what: str, delay: float = 0.0, timeout: float = BOUND_S) -> None:
        deadline = time.monotonic() + timeout
        while not ready(self):
            assert self.proc.poll() is None, f"nxd ended before {what}:\n" + "".join(self.lines[-30:])
            assert time.monotonic() < deadline, f"no {what} within {timeout} s (blocked?):\n" + "".join(self.lines[-30:])
            time.sleep(0.02)
        time.sleep(delay)
        assert self.proc.poll() is None, f"nxd ended before the kill {what}"
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def finish(self, timeout: float = BOUND_S) -> str:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"nxd run did not finish within {timeout} s:\n" + "".join(self.lines[-30:]))
        time.sleep(0.2)
        out = "".join(self.lines)
        assert self.proc.returncode == 0, out[-4000:]
        return out


def step_started(instance, step: str, holds_slot: bool = True):
    """Ready once this `nxd` process's run has started `step` (and holds its pool slot)."""
    def ready(n: "Nxd") -> bool:
        runs = instance.get_run_records(dg.RunsFilter(tags={"nx/worker_pid": str(n.proc.pid)}), limit=1)
        if not runs:
            return False
        run_id = runs[0].dagster_run.run_id
        started = any(e.dagster_event.step_key == step
                      for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START))
        return started and (not holds_slot or run_id in instance.event_log_storage.get_concurrency_run_ids())
    return ready


def staging(home: Path):
    """Ready once this process has staged a Parquet file (folders are named `<pid>-...`) or written a
    partition's file before its commit (`data/main/<table>/nx-<pid>-...`)."""
    return lambda n: (any((home / "staging").glob(f"{n.proc.pid}-*/*.parquet"))
                      or any((home / "data" / "main").glob(f"*/nx-{n.proc.pid}-*.parquet")))


def digests(home: Path) -> dict[str, tuple[int, str]]:
    """Per table: row count and md5 over all rows (every column but the wall-clock `created_at`)."""
    cat = Catalog(home)
    out = {}
    for t in TABLES:
        cols = [c for c in cat.query(f"SELECT * FROM {t} LIMIT 0").column_names if c != "created_at"]
        row = f"({', '.join(cols)})::VARCHAR"
        out[t] = tuple(cat.query(f"SELECT count(*), md5(coalesce(string_agg({row}, '|' ORDER BY {row}), '')) "
                                 f"FROM {t}").to_pylist()[0].values())
    return out


def env_for(tmp: Path, name: str, ckpt: Path, corpus: Path) -> dict:
    dagster_home = tmp / f"{name}-dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(POOLS)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return {**env, "NX_HOME": str(tmp / name), "NX_MODEL": str(ckpt), "NX_CORPUS": str(corpus),
            "DAGSTER_HOME": str(dagster_home), "NX_CWD": str(tmp), "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_rerun_after_kills_finishes_with_the_same_tables(tmp_path):
    ckpt, corpus = tiny_run_inputs(tmp_path, 120)
    clean_env = env_for(tmp_path, "clean", ckpt, corpus)
    env = env_for(tmp_path, "killed", ckpt, corpus)
    home = Path(env["NX_HOME"])
    clean = Nxd(clean_env)  # the uninterrupted run, alongside
    instance = _open(env["DAGSTER_HOME"])  # created here, before any nxd opens it

    kills = [  # (stages of that `nxd run`, when to kill it, label)
        ("activations", step_started(instance, "sequences", holds_slot=False), 0.2, "while sequences run"),
        ("activations", step_started(instance, "activations"), 0.5, "while activations hold the compute slot"),
        ("activations", staging(home), 0.0, "while writing/committing a partition"),
        ("activations,connections", step_started(instance, "connections"), 0.2, "while connections hold the compute slot"),
        ("explanations", step_started(instance, "post_fix__explanations"), 0.2, "while explanations hold the llm slot"),
        ("explanations,scores", step_started(instance, "post_fix__scores"), 0.5, "while scores hold the llm slot"),
    ]
    t0 = time.monotonic()
    for stages, ready, delay, label in kills:
        Nxd(env, "--stages", stages).kill_when(ready, label, delay)
    killed_s = time.monotonic() - t0

    t1 = time.monotonic()
    out = Nxd(env).finish()
    rerun_s = time.monotonic() - t1
    assert "is gone (killed or crashed)" in out  # the last kill was swept by this run
    clean.finish()

    with instance:
        assert not instance.get_run_records(dg.RunsFilter(statuses=NOT_FINISHED_STATUSES))
        failed = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        assert len(failed) == len(kills)  # each kill left one unfinished run: all are marked failed
        assert not instance.event_log_storage.get_concurrency_run_ids()  # no slot or pending step is held
    expected = digests(Path(clean_env["NX_HOME"]))
    assert digests(home) == expected
    leftovers = collect(Catalog(home), apply=True)  # what the kills left (staging folders): nothing referenced
    assert digests(home) == expected and not collect(Catalog(home))
    print(f"{len(kills)} kills survived ({killed_s:.0f} s of killed runs); rerun finished in {rerun_s:.0f} s; "
          f"nxd gc removed {len(leftovers)} leftovers")


def _open(dagster_home: str):
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(dagster_home))
