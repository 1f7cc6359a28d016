"""Wall time of the README's main job (`nxd run` on the bundled defaults, fresh data root) per stage and
step, with the process's CPU time and the machine's load average before and after (the project's
machines are shared: CPU time says what the run itself cost).

    python benchmarks/bench_main_job.py [--home DIR] [nxd run flags...]
    python benchmarks/bench_main_job.py --report DIR      # only read the steps of an earlier run's DIR

Per step: its start and end in the data root's Dagster event log (`get_run_step_stats`); per stage,
from the first step start to the last step end of its runs. CPU seconds of a step or stage: the `nxd run`
process's CPU time (user + system, from /proc/PID/stat, sampled every 0.2 s) at its end minus at its
start, linearly interpolated between samples; "outside steps" is the rest (start-up, imports, Dagster
between runs). Without /proc (or with --report) only wall times are shown.
"""

from __future__ import annotations

import argparse
import bisect
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGE_OF_STEP = {"model": "activations", "sequences": "activations", "activations": "activations",
                 "pre_fix__activations": "activations", "post_fix__activations": "activations",
                 "gelu_fix_impact": "activations", "connections": "connections"}


def stage_of(step: str) -> str:
    return STAGE_OF_STEP.get(step, "explanations" if step.endswith("explanations") and "scores" not in step
                             else "scores")


def steps(home: Path) -> list[tuple[str, float, float]]:
    """(step key, start, end) of every step of every run of `home`'s instance, in start order."""
    import dagster as dg

    from assets.runtime.instance import open_instance
    from nx_dagster.storage import Catalog

    instance = open_instance(Catalog(home))
    out = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS])):
        for st in instance.get_run_step_stats(run.run_id):
            out.append((st.step_key, st.start_time, st.end_time))
    return sorted(out, key=lambda s: s[1])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (and of its children it has waited for)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_sampled(cmd: list[str], env: dict, every_s: float = 0.2) -> list[tuple[float, float]]:
    """Run `cmd` to the end; (wall clock, its CPU seconds) every `every_s`. Raises on a failed run."""
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        cpu = cpu_seconds(proc.pid)
        if cpu is not None:
            samples.append((time.time(), cpu))
        time.sleep(every_s)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return samples


def cpu_at(samples: list[tuple[float, float]], t: float) -> float:
    i = bisect.bisect_left(samples, (t, -1.0))
    if i == 0 or i == len(samples):
        return samples[min(i, len(samples) - 1)][1]
    (t0, c0), (t1, c1) = samples[i - 1], samples[i]
    return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)


def report(home: Path, samples: list[tuple[float, float]] | None = None) -> None:
    rows = steps(home)
    cpu = (lambda start, end: f" | {cpu_at(samples, end) - cpu_at(samples, start):.1f}") if samples else \
        (lambda start, end: "")
    head = " | CPU seconds" if samples else ""
    stages: dict[str, list[float]] = {}
    print(f"| step | seconds{head} |\n| --- | ---{' | ---' if samples else ''} |")
    for key, start, end in rows:
        print(f"| {key} | {end - start:.1f}{cpu(start, end)} |")
        span = stages.setdefault(stage_of(key), [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
    print(f"\n| stage | seconds (first step start to last step end){head} |\n| --- | ---{' | ---' if samples else ''} |")
    for stage, (start, end) in stages.items():
        print(f"| {stage} | {end - start:.1f}{cpu(start, end)} |")
    if samples and rows:
        in_steps = sum(cpu_at(samples, end) - cpu_at(samples, start) for start, end in stages.values())
        print(f"| outside steps (start-up, imports, between runs) | "
              f"{samples[-1][0] - samples[0][0] - sum(e - s for s, e in stages.values()):.1f} | "
              f"{samples[-1][1] - in_steps:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", help="data root to create (default: a fresh temporary folder)")
    ap.add_argument("--report", help="only print the steps of this data root's runs")
    args, flags = ap.parse_known_args()
    if args.report:
        report(Path(args.report))
        return
    home = Path(args.home or tempfile.mkdtemp(prefix="nx_main_job_")) / "nx_data"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DAGSTER_HOME")}
    env.update(NX_HOME=str(home), PYTHONPATH=str(ROOT))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    samples = run_sampled([sys.executable, "-m", "nxd", "run", *flags], env)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"nxd run {' '.join(flags)}: {wall:.1f} s wall, {ru.ru_utime + ru.ru_stime:.1f} s CPU "
          f"(user {ru.ru_utime:.1f}, system {ru.ru_stime:.1f}); load average before "
          f"{load_before[0]:.2f}/{load_before[1]:.2f}, after {os.getloadavg()[0]:.2f}/{os.getloadavg()[1]:.2f}; "
          f"{os.cpu_count()} CPUs; data root {home}")
    report(home, samples)


if __name__ == "__main__":
    main()
