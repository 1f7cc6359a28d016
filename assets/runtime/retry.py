"""Re-execute a failed or killed `nxd run` from its failure, through Dagster's re-execution (`nxd retry`).

Dagster re-executes a run from failure (`ReexecutionOptions.from_failure`: the steps that failed or never
finished, reading what the succeeded steps materialized) only for a job it can rebuild in a new process:
a *reconstructable* job. `nxd run`'s jobs are built in its process from its flags, so every run it
launches records them in the tag `nx/run` (the assets selected and the `nx`/`llm` resource settings,
secrets left out: the API key and NX_CATALOG come from the environment of the machine that retries), and
`job_of` rebuilds the same job from that tag, in whichever process Dagster executes a step (the tag's
settings travel as the reconstructable job's argument). The new run is a child of the failed one (the UI shows
them as one lineage of attempts) and carries the retrying process's worker tags.

A run whose `nxd` process died on this host is first marked failed (`runs.sweep`); a run still running,
or left unfinished by a process on another host (which cannot be checked from here), is refused with a
named error.
"""

from __future__ import annotations

import json

import dagster as dg

from nx_dagster.errors import NxInputError

RUN_TAG = "nx/run"
SECRET_FIELDS = {"api_key", "catalog_url"}


def run_tag(selection: list[str], nx: dg.ConfigurableResource, llm: dg.ConfigurableResource) -> dict[str, str]:
    """The tag that lets `nxd retry` rebuild this run's job: {"nx/run": JSON}."""
    def fields(resource) -> dict:
        return {k: getattr(resource, k) for k in type(resource).model_fields if k not in SECRET_FIELDS}

    return {RUN_TAG: json.dumps({"selection": selection, "nx": fields(nx), "llm": fields(llm)}, sort_keys=True)}


def job_of(settings: dict) -> dg.JobDefinition:
    """The `nxd_run` job of a run's `nx/run` settings: the same assets, resources and console logger."""
    from assets.console import console_logger
    from assets.definitions import defs
    from assets.llm import LLMResource
    from assets.resources import NxResource

    definitions = defs()
    base = definitions.resources["llm"]
    llm = LLMResource(**{**{k: getattr(base, k) for k in LLMResource.model_fields}, **settings["llm"]})
    return dg.Definitions(
        jobs=[dg.define_asset_job("nxd_run", selection=settings["selection"])], assets=list(definitions.assets),
        resources={"nx": NxResource(**settings["nx"]), "llm": llm},
        loggers={"console": console_logger}).resolve_job_def("nxd_run")


def retry(instance: dg.DagsterInstance, run_id: str) -> dg.ExecuteJobResult:
    """Re-execute run `run_id` of `instance` from its failure; returns Dagster's result (its `run_id`
    is the new run's). Raises NxInputError for an unknown run, one not launched by `nxd run`, one that
    succeeded or is still running."""
    from dagster._core.execution.api import ReexecutionOptions
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

    from assets.runtime import runs

    runs.sweep(instance)  # a run whose process died here is marked failed first
    parent = instance.get_run_by_id(run_id)
    fix = "pick a failed run of this data root (`nxd ui`, or the Runs page of the Dagster UI)"
    if parent is None:
        raise NxInputError(f"run {run_id!r}", "is not in this data root's run history", fix)
    if RUN_TAG not in parent.tags:
        raise NxInputError(f"run {run_id!r}", "was not launched by `nxd run`",
                           "re-execute it from the Dagster UI (Re-execute > From failure)")
    if parent.status == dg.DagsterRunStatus.SUCCESS:
        raise NxInputError(f"run {run_id!r}", "succeeded: there is nothing to retry", fix)
    if parent.status in NOT_FINISHED_STATUSES:
        host = parent.tags.get(runs.TAG_PREFIX + "host", "?")
        raise NxInputError(f"run {run_id!r}", f"is still {parent.status.value.lower()} (its process, on host "
                           f"{host}, is running or cannot be checked from here)",
                           f"wait for it, or retry it on {host} once its process is gone")
    settings = json.loads(parent.tags[RUN_TAG])
    runs.ensure_pools(instance, runs.pools_of(job_of(settings)))
    with runs.Heartbeat(instance):
        return dg.execute_job(
            dg.build_reconstructable_job(__name__, job_of.__name__, (settings,)), instance,
            run_config=parent.run_config,
            tags={**{k: v for k, v in parent.tags.items() if not k.startswith(runs.TAG_PREFIX)}, **runs.worker_tags()},
            reexecution_options=ReexecutionOptions.from_failure(run_id, instance), raise_on_error=False)
