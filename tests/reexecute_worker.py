"""A fresh worker that re-executes a killed `nxd run` through Dagster: `python -m tests.reexecute_worker RUN_ID ASSET...`.

Dagster's re-execution from failure (`ReexecutionOptions.from_failure`) needs a reconstructable job, which
`nxd run`'s in-process jobs are not, so this builds the same job (`nxd_run`: every asset, the same resources
and console logger, in-process executor) from a module-level function. The settings come from the
environment (NX_HOME, NX_CATALOG, NX_MODEL, NX_CORPUS, DAGSTER_HOME; `--seq-len` 16 as the tests use).
It first sweeps the killed run (marks it failed, frees its slots), then re-executes its failed and
unfinished steps for the same layers (the parent run's tags, run config and asset selection). Exit 0 on
success, 1 when the re-executed run failed.
"""

from __future__ import annotations

import os
import sys

import dagster as dg

SEQ_LEN = 16


def nxd_run_job() -> dg.JobDefinition:
    from assets.console import console_logger
    from assets.definitions import defs
    from assets.llm import LLMResource
    from assets.resources import NxResource

    definitions = defs()
    llm = LLMResource(**{**{k: getattr(definitions.resources["llm"], k) for k in LLMResource.model_fields},
                         "explainer": "token_lookup", "simulator": "token_lookup"})
    return dg.Definitions(
        jobs=[dg.define_asset_job("nxd_run", selection=os.environ["NX_REEXECUTE_SELECTION"].split(","),
                                  executor_def=dg.in_process_executor)],
        assets=list(definitions.assets), resources={"nx": NxResource(seq_len=SEQ_LEN), "llm": llm},
        loggers={"console": console_logger}).resolve_job_def("nxd_run")


def main(run_id: str, selection: list[str]) -> int:
    """Re-execute run `run_id`, a run of `nxd run` that materialized the assets `selection`."""
    from dagster._core.execution.api import ReexecutionOptions

    from assets.instance import open_instance
    from assets.resources import NxResource
    from nx_dagster import runs

    os.environ["NX_REEXECUTE_SELECTION"] = ",".join(selection)  # read by nxd_run_job (same process)
    instance = open_instance(NxResource(seq_len=SEQ_LEN).catalog)
    swept = runs.sweep(instance)
    print(f"reexecute: swept {swept}", file=sys.stderr, flush=True)
    parent = instance.get_run_by_id(run_id)
    result = dg.execute_job(dg.reconstructable(nxd_run_job), instance, run_config=parent.run_config,
                            tags={**parent.tags, **runs.worker_tags()},  # the partition range, this process
                            reexecution_options=ReexecutionOptions.from_failure(run_id, instance))
    print(f"reexecute: run {result.run_id} (parent {run_id}) success={result.success}", file=sys.stderr, flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
