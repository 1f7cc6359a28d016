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

`ensure_pools` creates the pools' default limits before a run starts. Dagster creates a pool on the first
claim of a slot; on PostgreSQL two processes that claim a new pool at the same moment race on that
insert, and the loser's transaction is aborted (InFailedSqlTransaction), which fails its whole run; the
same error fails every run once the instance's default limit differs from the pool's
(dagster-io/dagster#33552, open).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import dagster as dg
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.storage.dagster_run import FINISHED_STATUSES, NOT_FINISHED_STATUSES

from nx_dagster import procs

log = logging.getLogger(__name__)
TAG_PREFIX = "nx/worker_"  # nx/worker_host, nx/worker_pid, nx/worker_start


def worker_tags() -> dict[str, str]:
    """Run tags that identify this process (host, pid, kernel start time)."""
    return {TAG_PREFIX + k: v for k, v in procs.identity().items()}


def _worker_gone(run: dg.DagsterRun) -> bool:
    tags = run.tags
    if TAG_PREFIX + "pid" not in tags:
        return False  # not launched by nxd: its own launcher/daemon watches it
    alive = procs.is_alive(tags.get(TAG_PREFIX + "host", ""), tags[TAG_PREFIX + "pid"],
                           tags.get(TAG_PREFIX + "start", ""))
    return alive is False


def sweep(instance: dg.DagsterInstance) -> dict[str, list[str]]:
    """Fail the unfinished runs whose `nxd` process is gone and free the concurrency slots of every
    run that is not running any more. Returns {"failed": run ids, "freed": run ids}.

    Safe while other `nxd run`s are live on the same instance: their processes exist, so their runs
    and slots are left alone."""
    failed = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=NOT_FINISHED_STATUSES)):
        run = record.dagster_run
        if not _worker_gone(run):
            continue
        pid = run.tags[TAG_PREFIX + "pid"]
        message = (f"The process that ran this run (pid {pid} on {run.tags.get(TAG_PREFIX + 'host')}) is gone "
                   "(killed or crashed); marked failed by the next `nxd run`.")
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


def pools_of(job: dg.JobDefinition) -> set[str]:
    """The concurrency pools that the ops of `job` claim slots in."""
    return {op.pool for op in job.graph.iterate_op_defs() if op.pool}


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
            pool = next((p for p in storage.get_pool_limits() if p.name == key), None)
            if pool is not None and not (pool.from_default and pool.limit != default):
                break
            try:
                storage.initialize_concurrency_limit_to_default(key)
                made.append(key)
                break
            except DBAPIError:
                pool = next((p for p in storage.get_pool_limits() if p.name == key), None)
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
