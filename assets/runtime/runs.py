"""Runs whose process died: mark them failed and give back their concurrency slots.

`nxd run` executes in its own process (`dg.materialize`, no dagster-daemon), so when that process is
killed its run stays STARTED and keeps the pool slot (`compute`, `llm`: limit 1 in dagster.yaml) of
the step it was running; every later run would then wait for that slot forever. Every run `nxd run`
launches carries the identity of its process as tags (`worker_tags`); before launching, `sweep`
finds unfinished runs whose process is gone (same host, pid not running or reused), reports them
failed through the instance (a PIPELINE_FAILURE event with reason UNEXPECTED_TERMINATION, so the UI
shows why) and frees the slots and pending steps of every run that holds some but is no longer
running. Runs launched elsewhere (the UI, a daemon) carry no such tags and are left to the daemon's
run monitoring (`run_monitoring` in dagster.yaml).

A process on another host cannot be looked up, so while `nxd` runs, a `Heartbeat` thread stamps its
unfinished runs every NX_WORKER_BEAT_S seconds (tag `nx/worker_beat`, Unix time); a run of another host
whose stamp is older than NX_WORKER_STALE_S is taken for dead (the hosts' clocks are assumed to agree
to well within that: NTP). The same thread sweeps on every beat, so a worker that waits for a pool slot
held by a worker that died meanwhile (on any host) gets the slot, instead of waiting forever.

`ensure_pools` creates the pools' default limits before a run starts. Dagster creates a pool on the first
claim of a slot; on PostgreSQL two processes that claim a new pool at the same moment race on that
insert, and the loser's transaction is aborted (InFailedSqlTransaction), which fails its whole run; the
same error fails every run once the instance's default limit differs from the pool's
(dagster-io/dagster#33552, open).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import dagster as dg
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.storage.dagster_run import FINISHED_STATUSES, NOT_FINISHED_STATUSES

from nx_dagster import procs, settings

log = logging.getLogger(__name__)
TAG_PREFIX = "nx/worker_"  # nx/worker_host, nx/worker_pid, nx/worker_start
BEAT_TAG = TAG_PREFIX + "beat"


def _identity_tags() -> dict[str, str]:
    return {TAG_PREFIX + k: v for k, v in procs.identity().items()}


def worker_tags() -> dict[str, str]:
    """Run tags that identify this process (host, pid, kernel start time) and its first heartbeat (now):
    call it for each run, when the run starts."""
    return {**_identity_tags(), BEAT_TAG: f"{time.time():.3f}"}


def _why_gone(record, now: float, stale_s: float) -> str | None:
    """Why the `nxd` process of this unfinished run is taken for dead, or None while it may live."""
    tags = record.dagster_run.tags
    if TAG_PREFIX + "pid" not in tags:
        return None  # not launched by nxd: its own launcher/daemon watches it
    alive = procs.is_alive(tags.get(TAG_PREFIX + "host", ""), tags[TAG_PREFIX + "pid"],
                           tags.get(TAG_PREFIX + "start", ""))
    if alive is not None:
        return None if alive else "is gone"
    try:  # another host: its heartbeat (runs of an nxd without one: the time the run was created)
        beat = float(tags[BEAT_TAG])
    except (KeyError, ValueError):
        beat = record.create_timestamp.timestamp()
    return f"has not been heard from for over {stale_s:g} s (NX_WORKER_STALE_S)" if now - beat > stale_s else None


def sweep(instance: dg.DagsterInstance) -> dict[str, list[str]]:
    """Fail the unfinished runs whose `nxd` process is gone (this host) or has not stamped them for
    NX_WORKER_STALE_S (another host), and free the concurrency slots of every run that is not running
    any more. Returns {"failed": run ids, "freed": run ids}.

    Safe while other `nxd run`s are live on the same instance: their processes exist, so their runs
    and slots are left alone."""
    failed = []
    now, stale_s = time.time(), settings.current().nx_worker_stale_s
    for record in instance.get_run_records(dg.RunsFilter(statuses=NOT_FINISHED_STATUSES)):
        run = record.dagster_run
        how = _why_gone(record, now, stale_s)
        if how is None or instance.get_run_by_id(run.run_id).status not in NOT_FINISHED_STATUSES:
            continue  # alive, or another process's sweep got there first
        pid, host = run.tags[TAG_PREFIX + "pid"], run.tags.get(TAG_PREFIX + "host")
        message = (f"The process that ran this run (pid {pid} on {host}) {how} (killed or crashed); "
                   "marked failed by another `nxd` process.")
        instance.report_run_failed(run, message, JobFailureData(
            error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION))
        failed.append(run.run_id)
        log.warning("run %s: %s", run.run_id, message)

    freed = []
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holders = storage.get_concurrency_run_ids()
        if holders:
            done = {r.dagster_run.run_id for r in instance.get_run_records(
                dg.RunsFilter(run_ids=list(holders), statuses=FINISHED_STATUSES))}
            known = {r.dagster_run.run_id for r in instance.get_run_records(dg.RunsFilter(run_ids=list(holders)))}
            for run_id in sorted(holders):
                if run_id in done or run_id not in known:  # finished, or deleted from the history
                    storage.free_concurrency_slots_for_run(run_id)
                    freed.append(run_id)
                    log.warning("run %s: freed its concurrency slots (the run is not running)", run_id)
    return {"failed": failed, "freed": freed}


class Heartbeat:
    """While the `with` block runs: every NX_WORKER_BEAT_S seconds, stamp this process's unfinished runs
    (`nx/worker_beat`, so that other hosts can tell it lives) and `sweep` (so that a slot held by a
    worker that died is given back while this process waits for it). Runs in a daemon thread on an
    instance of its own (opened from `instance`'s ref); an error in a beat is logged and the next beat
    tries again: the runs themselves go on."""

    def __init__(self, instance: dg.DagsterInstance):
        self._ref = instance.get_ref()
        self.every = settings.current().nx_worker_beat_s  # a bad NX_WORKER_* fails now, in one line, not in the thread
        self._me = _identity_tags()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nxd-heartbeat", daemon=True)
        self.beats = 0

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        with dg.DagsterInstance.from_ref(self._ref) as instance:
            while not self._stop.wait(self.every):
                try:
                    self.beat(instance)
                    sweep(instance)
                except Exception as e:  # noqa: BLE001  (a missed beat is logged; the next one retries)
                    log.warning("heartbeat: %s: %s (retrying in %g s)", type(e).__name__, e, self.every)

    def beat(self, instance: dg.DagsterInstance) -> None:
        """Stamp this process's unfinished runs with the time now."""
        for record in instance.get_run_records(dg.RunsFilter(tags=self._me, statuses=NOT_FINISHED_STATUSES)):
            instance.add_run_tags(record.dagster_run.run_id, {BEAT_TAG: f"{time.time():.3f}"})
        self.beats += 1


def pools_of(job: dg.JobDefinition) -> set[str]:
    """The concurrency pools that the ops of `job` claim slots in."""
    return {op.pool for op in job.graph.iterate_op_defs() if op.pool}


def _pool(storage, key: str):
    return next((p for p in storage.get_pool_limits() if p.name == key), None)


def ensure_pools(instance: dg.DagsterInstance, pools: Iterable[str], attempts: int = 6) -> list[str]:
    """Give each pool in `pools` the instance's default limit (`concurrency.pools.default_limit`) unless it
    has one already, so that no run has to create a pool while claiming its first slot. Returns the
    pools this call initialized.

    Several processes (machines) may call this at once: a creation that loses the race to another
    process fails inside the database, and the next attempt finds the pool made. Pools with a limit set
    by hand (`dagster instance concurrency set`) are left alone. Raises the database error after
    `attempts` failed tries."""
    from sqlalchemy.exc import DBAPIError

    storage = instance.event_log_storage
    default = instance.global_op_concurrency_default_limit
    if not storage.supports_global_concurrency_limits or default is None:
        return []
    made = []
    for key in sorted(set(pools)):
        for attempt in range(attempts):
            pool = _pool(storage, key)
            if pool is not None and not (pool.from_default and pool.limit != default):
                break
            try:
                storage.initialize_concurrency_limit_to_default(key)
                made.append(key)
                break
            except DBAPIError:
                pool = _pool(storage, key)
                if pool is not None and pool.limit == default:
                    break  # another process created the pool in the meantime
                if pool is not None and pool.from_default:
                    # the default changed since the pool was made: on PostgreSQL Dagster cannot update a
                    # default pool (dagster-io/dagster#33552), so the pool gets the new limit as its own
                    storage.set_concurrency_slots(key, default)
                    log.warning("pool %s: limit %d -> %d (concurrency.pools.default_limit), now set on the "
                                "pool itself", key, pool.limit, default)
                    made.append(key)
                    break
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
    return made
