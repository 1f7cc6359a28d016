"""The `method_check` asset: the configured explainer, simulator and judge on planted neurons of known
meaning (`nx_dagster.stages.method_check`), one row per scorer in the table `method_checks`.

Not part of any stage: `nxd check-method` materializes it (or the UI). Its calls go through the data
root's ledger, so checking the same set-up again pays nothing twice.
"""

import dagster as dg

from assets.console import input_errors_fail_fast
from assets.llm import LLMResource
from assets.metadata import markdown_table
from assets.resources import NxResource
from nx_dagster.vocab import TOKEN_LOOKUP

SHOWN = ("scorer", "n_recovered", "n_planted", "planted_mean", "planted_null_mean", "planted_above_null",
         "random_mean", "random_null_mean", "random_above_null", "passed")


class MethodCheckConfig(dg.Config):
    n_random: int = 20  # random neurons beside the planted ones
    sequences: int = 2000  # bundled corpus sequences recorded


@dg.asset(
    key="method_check", group_name="checks", kinds={"openai", "duckdb"}, code_version="method-check-v1",
    pool="llm", check_specs=[dg.AssetCheckSpec(
        "planted_recovered", asset="method_check",
        description="every planted neuron's token named, and every planted score above its null")],
    description="The configured explainer, simulator and judge on a checkpoint with planted neurons that fire on "
                "known tokens (table method_checks).",
)
def method_check(context: dg.AssetExecutionContext, nx: NxResource, llm: LLMResource,
                 config: MethodCheckConfig) -> dg.MaterializeResult:
    from nx_dagster.stages.method_check import check_method, write_method_check

    methods = (llm.explainer_name, llm.simulator_name, llm.judge_name)
    client = llm.client(nx.catalog, any(m != TOKEN_LOOKUP for m in methods))
    if client is not None:
        client.on_progress = context.log.info
    with input_errors_fail_fast():
        rows = check_method(llm.explainer_name, llm.simulator_name, llm.judge_for(nx.catalog, context.log.info), client,
                            n_random=config.n_random, sequences=config.sequences, report=context.log.info)
    write_method_check(nx.catalog, rows)
    passed = all(r["passed"] for r in rows)
    first = rows[0]
    return dg.MaterializeResult(
        metadata={**nx.catalog.describe(), "check_id": first["check_id"], "explainer": first["explainer"],
                  "simulator": first["simulator"], "judge": first["judge"],
                  "models": ", ".join(str(first[k]) for k in ("explainer_model", "simulator_model", "judge_model")),
                  "report": dg.MetadataValue.md(markdown_table([{k: r[k] for k in SHOWN} for r in rows])),
                  "llm_calls": first["llm_calls"], "cost_usd_per_neuron": first["cost_usd_per_neuron"],
                  "seconds": round(first["seconds"], 1)},
        check_results=[dg.AssetCheckResult(check_name="planted_recovered", passed=passed,
                                           metadata={"recovered": first["n_recovered"],
                                                     "planted": first["n_planted"]})])
