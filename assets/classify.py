"""Assets of the detection, fuzzing and intruder scores, in both GELU lineages.

  {v}/classification_scores        v's explanations judged (detection, fuzzing) on v's records
  post_fix/classification_scores_of_pre_fix_explanations
                                   pre-fix explanations judged on post-fix records
  {v}/intruder_scores              v's neurons: is the odd excerpt found? (no explanation)

Partitioned by layer, in the `scores` stage beside the simulation scores. Judges go through the same LLM
client, ledger and pool as the simulators; the offline judge (`token_lookup`) needs no key.
"""

import dagster as dg
import numpy as np

from assets.console import input_errors_fail_fast
from assets.explain import RETRY, NeuronsConfig, llm_metadata, shard_of
from assets.llm import LLMResource
from assets.metadata import histogram, markdown_table, of_layer
from assets.partitions import layers
from assets.resources import NxResource
from nx_dagster.hashing import short_digest
from nx_dagster.vocab import GELU_VARIANTS, POST_FIX, PRE_FIX

CODE_VERSION = "classify-v1-judge-v1"  # excerpts, judges' prompts and the statistics (explain/classify.py)
MAX_FAILED = 0.5  # the failure_rate checks: at most this share of neurons without a score


def _ranges_ok(values, lows, highs) -> bool:
    """Scores in [0, 1] and inside their interval."""
    for v, lo, hi in zip(values, lows, highs):
        if v is None:
            continue
        if not 0 <= v <= 1 or (lo is not None and not lo - 1e-9 <= v <= hi + 1e-9):
            return False
    return True


def classification_asset(explanation_variant: str, scored_variant: str) -> dg.AssetsDefinition:
    same = explanation_variant == scored_variant
    name = "classification_scores" if same else f"classification_scores_of_{explanation_variant}_explanations"
    key = dg.AssetKey([scored_variant, name])

    @dg.asset(
        key=key, partitions_def=layers, group_name=scored_variant, kinds={"openai", "duckdb"},
        deps=[dg.AssetKey([explanation_variant, "explanations"]), dg.AssetKey([scored_variant, "activations"])],
        code_version=CODE_VERSION, pool="llm", retry_policy=RETRY, backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=[
            dg.AssetCheckSpec("score_ranges", asset=key, description="balanced accuracy in [0, 1] and in its interval"),
            dg.AssetCheckSpec("failure_rate", asset=key,
                              description=f"at most {MAX_FAILED:.0%} of neurons without a score, per scorer"),
        ],
        description=f"Detection and fuzzing scores of `{explanation_variant}` explanations judged on "
                    f"`{scored_variant}` records, with intervals and nulls (table classification_scores). "
                    "One partition = one layer.",
    )
    def _asset(context: dg.AssetExecutionContext, nx: NxResource, llm: LLMResource,
               config: NeuronsConfig) -> dg.MaterializeResult:
        from nx_dagster.stages import classify as stage  # imports torch code: by a run, not at load

        s = nx.subject
        layer_list = sorted(int(k) for k in context.partition_keys)
        judge = llm.judge_for(nx.catalog, context.log.info)
        with input_errors_fail_fast():
            out = stage.write_classification_scores(
                nx.catalog, s.name, s.corpus.name, explanation_variant, scored_variant, layer_list,
                shard_of(config.neurons, s.ckpt.config.n_neurons), llm.explainer_name, judge,
                null_fraction=llm.checked_null_fraction(), seed=nx.seed, report=context.log.info)
        t = out["table"]
        summary = stage.classification_summary(t)
        for layer in layer_list:
            own = of_layer(t, layer)
            ba = np.array([v for v in own["balanced_accuracy"].to_pylist() if v is not None], float)
            context.add_asset_metadata({
                "layer": layer, "dagster/row_count": own.num_rows,
                "summary": dg.MetadataValue.md(markdown_table(stage.classification_summary(own))),
                "balanced_accuracy_distribution": dg.MetadataValue.md(histogram(ba, label="balanced_accuracy")),
            }, partition_key=str(layer))
        worst = max((r["failures"] / r["neurons"] for r in summary), default=0.0)
        content = t.select(["explanation_id", "scorer", "judge", "judge_model", "balanced_accuracy",
                            "null_balanced_accuracy", "failure_reason"]).to_pylist()
        return dg.MaterializeResult(
            data_version=dg.DataVersion(short_digest(
                sorted(content, key=lambda r: (r["explanation_id"], r["scorer"])), 16)),
            metadata={**nx.provenance(), "judge": judge.name, "judge_model": judge.model,
                      "explanation_gelu_variant": explanation_variant, "scored_on": scored_variant,
                      "pass_layers": layer_list, "summary": dg.MetadataValue.md(markdown_table(summary)),
                      "seconds": round(out["seconds"], 2), **llm_metadata(out["llm"])},
            check_results=[
                dg.AssetCheckResult(check_name="score_ranges", asset_key=key, passed=_ranges_ok(
                    t["balanced_accuracy"].to_pylist(), t["balanced_accuracy_ci_low"].to_pylist(),
                    t["balanced_accuracy_ci_high"].to_pylist()), metadata={**nx.provenance(), "layers": layer_list}),
                dg.AssetCheckResult(check_name="failure_rate", asset_key=key, passed=worst <= MAX_FAILED,
                                    metadata={**nx.provenance(), "layers": layer_list,
                                              "worst_failure_share": round(worst, 4)}),
            ])

    return _asset


def intruder_asset(variant: str) -> dg.AssetsDefinition:
    key = dg.AssetKey([variant, "intruder_scores"])

    @dg.asset(
        key=key, partitions_def=layers, group_name=variant, kinds={"openai", "duckdb"},
        deps=[dg.AssetKey([variant, "activations"])], code_version=CODE_VERSION, pool="llm", retry_policy=RETRY,
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=[
            dg.AssetCheckSpec("score_ranges", asset=key, description="accuracy in [0, 1] and in its interval"),
            dg.AssetCheckSpec("failure_rate", asset=key, description=f"at most {MAX_FAILED:.0%} of neurons "
                                                                     "without a score"),
        ],
        description=f"Intruder scores of `{variant}` neurons: trials of a neuron's excerpts and one of another "
                    "neuron, no explanation (table intruder_scores). One partition = one layer.",
    )
    def _asset(context: dg.AssetExecutionContext, nx: NxResource, llm: LLMResource,
               config: NeuronsConfig) -> dg.MaterializeResult:
        from nx_dagster.stages import classify as stage

        s = nx.subject
        layer_list = sorted(int(k) for k in context.partition_keys)
        judge = llm.judge_for(nx.catalog, context.log.info)
        with input_errors_fail_fast():
            out = stage.write_intruder_scores(nx.catalog, s.name, s.corpus.name, variant, layer_list,
                                              shard_of(config.neurons, s.ckpt.config.n_neurons), judge,
                                              seed=nx.seed, report=context.log.info)
        t = out["table"]
        acc = t["accuracy"].to_pylist()
        failed = sum(a is None for a in acc)
        for layer in layer_list:
            own = of_layer(t, layer)
            values = np.array([v for v in own["accuracy"].to_pylist() if v is not None], float)
            context.add_asset_metadata({
                "layer": layer, "dagster/row_count": own.num_rows,
                "mean_accuracy": float(values.mean()) if len(values) else None,
                "chance": own["chance"][0].as_py() if own.num_rows else None,
                "accuracy_distribution": dg.MetadataValue.md(histogram(values, label="accuracy")),
            }, partition_key=str(layer))
        content = t.select(["layer", "neuron", "judge", "judge_model", "n_correct", "failure_reason"]).to_pylist()
        return dg.MaterializeResult(
            data_version=dg.DataVersion(short_digest(sorted(content, key=lambda r: (r["layer"], r["neuron"])), 16)),
            metadata={**nx.provenance(), "judge": judge.name, "judge_model": judge.model, "gelu_variant": variant,
                      "pass_layers": layer_list, "seconds": round(out["seconds"], 2), **llm_metadata(out["llm"])},
            check_results=[
                dg.AssetCheckResult(check_name="score_ranges", asset_key=key, passed=_ranges_ok(
                    acc, t["accuracy_ci_low"].to_pylist(), t["accuracy_ci_high"].to_pylist()),
                    metadata={**nx.provenance(), "layers": layer_list}),
                dg.AssetCheckResult(check_name="failure_rate", asset_key=key,
                                    passed=failed <= MAX_FAILED * max(t.num_rows, 1),
                                    metadata={**nx.provenance(), "layers": layer_list, "failures": failed,
                                              "neurons": t.num_rows}),
            ])

    return _asset


CLASSIFY_ASSETS = [
    *[classification_asset(v, v) for v in GELU_VARIANTS],
    classification_asset(PRE_FIX, POST_FIX),
    *[intruder_asset(v) for v in GELU_VARIANTS],
]
