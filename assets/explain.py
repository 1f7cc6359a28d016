"""Assets of the `explanations` and `scores` stages, in both GELU lineages.

  {v}/explanations                 explanations written from variant v's train records
  {v}/scores                       v's explanations simulated and scored on v's valid records
  post_fix/scores_of_pre_fix_explanations
                                   pre-fix explanations scored on post-fix activations: do they still hold?

All are partitioned by layer; a `neurons` range explains a sample first. LLM calls go through one
ledger, so a rerun or a resumed backfill never pays for an answered call twice.
"""

import warnings

import dagster as dg
import numpy as np

from assets.console import input_errors_fail_fast
from assets.llm import LLMResource
from assets.metadata import histogram, markdown_table, of_layer
from assets.partitions import layers
from assets.resources import NxResource
from nx_dagster.hashing import short_digest
from nx_dagster.explain import EXPLAIN_PROMPT_VERSION, SIMULATOR_VERSIONS, TOKEN_LOOKUP_VERSION
from nx_dagster.ranges import contiguous_runs, parse_ranges
from nx_dagster.vocab import GELU_VARIANTS, POST_FIX, PRE_FIX, TOKEN_LOOKUP

warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")
RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)


class NeuronsConfig(dg.Config):
    neurons: str = ""  # a contiguous range such as 0-99; empty = all


def shard_of(text: str, n_neurons: int) -> range | None:
    chosen = parse_ranges(text, "neurons", n_neurons)
    if not chosen:
        return None
    runs = contiguous_runs(chosen)
    if len(runs) > 1:
        raise dg.Failure(f"neurons {text!r} must be one contiguous range, like 0-99")
    return runs[0]


def llm_metadata(llm: dict) -> dict:
    keep = ("calls", "ok", "failed", "unusable", "pending", "prompt_tokens", "completion_tokens", "cost_usd",
            "session_requests_sent", "session_answered_from_ledger", "session_failed", "session_unusable",
            "session_reasked", "session_pending_resent")
    return {f"llm_{k}": v for k, v in llm.items() if k in keep and v is not None}


def explanations_asset(variant: str) -> dg.AssetsDefinition:
    key = dg.AssetKey([variant, "explanations"])

    @dg.asset(
        key=key, deps=[dg.AssetKey([variant, "activations"])], partitions_def=layers, group_name=variant,
        kinds={"openai", "duckdb"}, code_version=f"explanations-{EXPLAIN_PROMPT_VERSION}-{TOKEN_LOOKUP_VERSION}",
        pool="llm", retry_policy=RETRY, backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=[dg.AssetCheckSpec("failure_rate", asset=key, description="at most 20% of neurons unexplained")],
        description=f"Explanations written from `{variant}` train records (table explanations). One partition = one layer.",
    )
    def _asset(context: dg.AssetExecutionContext, nx: NxResource, llm: LLMResource,
               config: NeuronsConfig) -> dg.MaterializeResult:
        from nx_dagster.stages import explain as stage  # imports torch code: by a run, not at load

        s = nx.subject
        explainer = llm.explainer_name
        layer_list = sorted(int(k) for k in context.partition_keys)
        shard = shard_of(config.neurons, s.ckpt.config.n_neurons)
        client = llm.client(nx.catalog, explainer != TOKEN_LOOKUP)
        if client is not None:
            client.on_progress = context.log.info  # progress in the terminal and the run log
        with input_errors_fail_fast():
            out = stage.write_explanations(nx.catalog, s.name, s.corpus.name, variant, layer_list, shard, explainer,
                                           client, report=context.log.info)
        t = out["table"]
        failed = t["explanation"].null_count
        for layer in layer_list:  # each partition's own figures
            own = of_layer(t, layer)
            sample = [{k: r[k] for k in ("neuron", "explanation", "failure_reason")}
                      for r in own.slice(0, 10).to_pylist()]
            context.add_asset_metadata({"layer": layer, "dagster/row_count": own.num_rows,
                                        "failures": own["explanation"].null_count,
                                        "sample": dg.MetadataValue.md(markdown_table(sample))},
                                       partition_key=str(layer))
        settings = {"explainer": explainer, "explainer_model": client.settings.explainer_model if client else None}
        return dg.MaterializeResult(
            # the explanation ids hash model, variant, neuron, explainer, its model, prompt version and text
            data_version=dg.DataVersion(short_digest(sorted(t["explanation_id"].to_pylist()), 16)),
            metadata={**nx.provenance(), "gelu_variant": variant, "settings": settings, "explainer": explainer,
                      "pass_layers": layer_list, "seconds": round(out["seconds"], 2), **llm_metadata(out["llm"])},
            check_results=[dg.AssetCheckResult(check_name="failure_rate", asset_key=key,
                                               passed=failed <= 0.2 * max(t.num_rows, 1),
                                               metadata={**nx.provenance(), "layers": layer_list, "failed": failed,
                                                         "explanations": t.num_rows})],
        )

    return _asset


def scores_asset(explanation_variant: str, scored_variant: str) -> dg.AssetsDefinition:
    same = explanation_variant == scored_variant
    name = "scores" if same else f"scores_of_{explanation_variant}_explanations"
    key = dg.AssetKey([scored_variant, name])

    @dg.asset(
        key=key, partitions_def=layers, group_name=scored_variant, kinds={"openai", "duckdb"},
        deps=[dg.AssetKey([explanation_variant, "explanations"]), dg.AssetKey([scored_variant, "activations"])],
        code_version=f"scores-v2-{'-'.join(SIMULATOR_VERSIONS.values())}", pool="llm", retry_policy=RETRY,
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=[
            dg.AssetCheckSpec("score_ranges", asset=key, description="correlations in [-1, 1], rsquared <= 1"),
            dg.AssetCheckSpec("failure_rate", asset=key, description="at most 20% of neurons without a score"),
        ],
        description=f"Simulations and scores of `{explanation_variant}` explanations on `{scored_variant}` "
                    "valid records (tables simulations, scores). One partition = one layer.",
    )
    def _asset(context: dg.AssetExecutionContext, nx: NxResource, llm: LLMResource,
               config: NeuronsConfig) -> dg.MaterializeResult:
        from nx_dagster.stages import explain as stage

        s = nx.subject
        explainer, simulator = llm.explainer_name, llm.simulator_name
        layer_list = sorted(int(k) for k in context.partition_keys)
        shard = shard_of(config.neurons, s.ckpt.config.n_neurons)
        client = llm.client(nx.catalog, simulator != TOKEN_LOOKUP)
        if client is not None:
            client.on_progress = context.log.info  # progress in the terminal and the run log
        with input_errors_fail_fast():
            out = stage.write_scores(nx.catalog, s.name, s.corpus.name, explanation_variant, scored_variant,
                                     layer_list, shard, explainer, simulator, client, report=context.log.info,
                                     null_fraction=llm.checked_null_fraction(), seed=nx.seed)
        scores = out["scores"]
        corr = np.concatenate([scores[c].to_numpy(zero_copy_only=False).astype(float)
                               for c in ("ev_correlation", "ev_correlation_top", "ev_correlation_random")])
        rsq = scores["rsquared"].to_numpy(zero_copy_only=False).astype(float)
        bad = int(np.sum(np.abs(corr[np.isfinite(corr)]) > 1 + 1e-9) + np.sum(rsq[np.isfinite(rsq)] > 1 + 1e-9))
        summary = stage.score_summary(scores)
        comparison = {} if same else {r["layer"]: r for r in stage.lineage_comparison(
            nx.catalog, s.name, explanation_variant, scored_variant, layer_list, explainer, simulator)}
        for layer in layer_list:  # each partition's own figures
            own = of_layer(scores, layer)
            own_ev = own["ev_correlation"].to_numpy(zero_copy_only=False).astype(float)
            context.add_asset_metadata({
                "layer": layer, "dagster/row_count": own.num_rows, **stage.score_summary(own),
                "ev_correlation_distribution": dg.MetadataValue.md(histogram(own_ev, label="ev_correlation")),
                **({} if same else {"pre_vs_post": dg.MetadataValue.md(  # "_no rows_" until both are scored
                    markdown_table([comparison[layer]] if layer in comparison else []))}),
            }, partition_key=str(layer))
        meta = {**nx.provenance(), "simulator_model": client.settings.simulator_model if client else None,
                "explainer": explainer, "simulator": simulator, "explanation_gelu_variant": explanation_variant,
                "scored_on": scored_variant, "pass_layers": layer_list, "simulations_in_pass": out["simulations"],
                "seconds": round(out["seconds"], 2), **llm_metadata(out["llm"])}
        content = scores.select(["explanation_id", "gelu_variant", "simulator", "simulator_model", "ev_correlation",
                                 "rsquared", "absolute_dev_explained", "failure_reason"]).to_pylist()
        return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(short_digest(
            sorted(content, key=lambda r: (r["explanation_id"], r["simulator"])), 16)), check_results=[
            dg.AssetCheckResult(check_name="score_ranges", asset_key=key, passed=bad == 0,
                                metadata={**nx.provenance(), "layers": layer_list, "out_of_range": bad}),
            dg.AssetCheckResult(check_name="failure_rate", asset_key=key,
                                passed=summary["failures"] <= 0.2 * max(scores.num_rows, 1),
                                metadata={**nx.provenance(), "layers": layer_list, "failures": summary["failures"],
                                          "neurons": scores.num_rows}),
        ])

    return _asset


EXPLAIN_ASSETS = [
    *[explanations_asset(v) for v in GELU_VARIANTS],
    *[scores_asset(v, v) for v in GELU_VARIANTS],
    scores_asset(PRE_FIX, POST_FIX),
]
