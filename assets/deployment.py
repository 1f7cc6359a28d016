"""Definitions for a deployment on several machines: the project's assets, split into jobs by the kind
of machine their steps need, each job with its own executor.

The kind of machine follows the pool each asset already declares (`pool=` on the asset):
- `gpu`: the `compute` pool (activations, gelu_fix_impact, connections): forward passes and weight
  products, on GPU nodes;
- `llm`: the `llm` pool (explanations, every scorer, the method check): network-bound calls to the LLM endpoint, on small CPU
  nodes near it;
- `cpu`: model and sequences: tokenizing and bookkeeping. (`release_job` stays as it is, on the
  `cpu` executor.)

Layer-partitioned assets are backfilled in runs of `layers_per_run` layers (default 1, env
NX_LAYERS_PER_RUN): each such run is one partition range, executed by its own pod (Kubernetes) or
worker (Celery), so a backfill of every layer spreads over the machines of its kind. The concurrency
pools (in the shared PostgreSQL instance) still bound how many run at once: `dagster instance
concurrency set compute N` for N GPUs.

`deploy/k8s/definitions.py` (one executor that sizes each step's pod by `step_kinds`) and
`deploy/celery/definitions.py` (one Celery queue per kind) call `deployment_definitions` with their
executors; nothing here imports dagster-k8s or dagster-celery.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from assets.definitions import defs as project_defs
from nx_dagster import settings

KINDS = ("cpu", "gpu", "llm")
_POOL_KIND = {"compute": "gpu", "llm": "llm"}


def machine_kind(asset: dg.AssetsDefinition) -> str:
    """`gpu`, `llm` or `cpu`, from the asset's pool (see the module docstring)."""
    return _POOL_KIND.get(getattr(asset.node_def, "pool", None) or "", "cpu")


# materialized on request (release_job, `nxd check-method`), never as part of a machine kind's job
ON_REQUEST = (dg.AssetKey("release"), dg.AssetKey("method_check"))


def step_kinds(defs: dg.Definitions | None = None) -> dict[str, str]:
    """{step (op) name: machine kind} for every asset of the project, e.g. `activations: gpu`."""
    return {asset.node_def.name: machine_kind(asset) for asset in (defs or project_defs()).assets}


def deployment_definitions(executor: dg.ExecutorDefinition,
                           job_executors: Mapping[str, dg.ExecutorDefinition] | None = None,
                           layers_per_run: int | None = None) -> dg.Definitions:
    """The project's assets and resources run by `executor` (the default of every job, the asset
    graph's and backfills' included), with one job per machine kind (`cpu_job`, `gpu_job`, `llm_job`)
    run by `job_executors[kind]` where given, and the project's `release_job`.

    Raises NxInputError if `layers_per_run` (or NX_LAYERS_PER_RUN) is not a positive integer."""
    env = settings.current()
    per_run = (env.replace(nx_layers_per_run=layers_per_run) if layers_per_run is not None else env).nx_layers_per_run
    base = project_defs()
    assets = []
    kinds: dict[str, list[dg.AssetKey]] = {k: [] for k in KINDS}
    for asset in base.assets:
        kinds[machine_kind(asset)].extend(k for k in asset.keys if k not in ON_REQUEST)
        if asset.partitions_def is not None:
            asset = asset.with_attributes(backfill_policy=dg.BackfillPolicy.multi_run(per_run))
        assets.append(asset)
    jobs = [dg.define_asset_job(f"{kind}_job", selection=dg.AssetSelection.assets(*keys),
                                executor_def=(job_executors or {}).get(kind),
                                description=f"The assets whose steps run on {kind} machines.")
            for kind, keys in kinds.items() if keys]
    release = [j for j in base.jobs if j.name == "release_job"]
    return dg.Definitions(assets=assets, resources=base.resources, jobs=[*jobs, *release], executor=executor)
