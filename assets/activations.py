"""Assets of the `activations` stage: model → sequences → {pre_fix, post_fix}/activations, gelu_fix_impact.

The GELU variant is part of the asset key, so the UI shows two lineages. Activations are partitioned
by layer (dynamic partitions registered by `model`); a backfill of many layers runs as one pass.
"""


import warnings

import dagster as dg
import numpy as np
import pyarrow.compute as pc

from assets.metadata import histogram, markdown_table, schema
from assets.partitions import layers, register_layers
from assets.resources import NxResource
from nx_dagster.activations.fix_impact import QUANTILES
from nx_dagster.model.gelu import VARIANTS
from nx_dagster.ranges import contiguous_runs, parse_ranges
from nx_dagster.stages import activations as stage
from nx_dagster.viewer.serve import page_url

warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")

# OpenAI's published |post_fix − pre_fix| for GPT-2 small, for comparison in the UI.
OPENAI_GPT2_SMALL = {"median": 0.0090, "p90": 0.0252, "p99": 0.0839, "p999": 0.1736}


@dg.asset(key="model", group_name="corpus", kinds={"pytorch", "duckdb"}, code_version="model-v1")
def model_asset(context: dg.AssetExecutionContext, nx: NxResource) -> dg.MaterializeResult:
    """The subject checkpoint: one row of `models`. Its data version is the checkpoint's hash, so new
    weights mark everything downstream stale. Registers one `layers` partition per layer."""
    nx.validate()  # the whole corpus too: nothing is written before every input checks out
    s = nx.subject
    meta = stage.write_model(nx.catalog, s)
    register_layers(context.instance, s.ckpt.config.n_layer)
    return dg.MaterializeResult(
        metadata={**meta, **nx.provenance(), "source": s.ckpt.source, "folder": str(s.ckpt.folder)},
        data_version=dg.DataVersion(s.ckpt.data_version),
    )


SEQUENCES_VERSION = "sequences-v1"


@dg.asset(deps=["model"], group_name="corpus", kinds={"duckdb"}, code_version=SEQUENCES_VERSION)
def sequences(context: dg.AssetExecutionContext, nx: NxResource) -> dg.MaterializeResult:
    """The corpus cut into fixed-length token sequences with stable ids (table `sequences`). Its data
    version is the corpus identity (content + cutting settings) with the tokenizer's checkpoint."""
    meta = stage.write_sequences(nx.catalog, nx.subject)
    context.log.info(f"{meta['sequences']:,} sequences of {meta['seq_len']} tokens from corpus {meta['corpus']!r}")
    return dg.MaterializeResult(metadata={**meta, **nx.provenance(), "dagster/row_count": meta["sequences"]},
                                data_version=nx.data_version(SEQUENCES_VERSION))


class ActivationsConfig(dg.Config):
    neurons: str = ""  # e.g. "0-511": a contiguous shard of neurons; empty = all


def _checks(key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec("no_nan", asset=key, description="no NaN in records or moments"),
        dg.AssetCheckSpec("top_records_sorted", asset=key, description="top records by max activation, rank 0 first"),
        dg.AssetCheckSpec("counts_complete", asset=key, description="every neuron has its top and random records"),
    ]


def _check_results(key, records, stats, expect_top: int, expect_random: int) -> list[dg.AssetCheckResult]:
    nan_records = int(pc.sum(pc.is_nan(pc.list_flatten(records["activations"]))).as_py() or 0)
    nan_stats = int(pc.sum(pc.is_nan(stats["mean"])).as_py() or 0) + int(stats["mean"].null_count)
    kind = records["kind"].to_numpy(zero_copy_only=False)
    neuron = records["neuron"].to_numpy()
    layer = records["layer"].to_numpy()
    mx = records["max_activation"].to_numpy()
    top = kind == "top"
    # rows are ordered by neuron then rank; within a neuron the max must not increase with rank
    same = (neuron[1:] == neuron[:-1]) & (layer[1:] == layer[:-1]) & top[1:] & top[:-1]
    unsorted = int(np.sum(same & (mx[1:] > mx[:-1])))
    n_neurons = stats.num_rows
    short_top = n_neurons * expect_top - int(top.sum())
    short_random = n_neurons * expect_random - int((kind == "random").sum())
    return [
        dg.AssetCheckResult(check_name="no_nan", asset_key=key, passed=nan_records + nan_stats == 0,
                            metadata={"nan_activations": nan_records, "nan_or_null_means": nan_stats}),
        dg.AssetCheckResult(check_name="top_records_sorted", asset_key=key, passed=unsorted == 0,
                            metadata={"out_of_order_pairs": unsorted}),
        dg.AssetCheckResult(check_name="counts_complete", asset_key=key, passed=short_top == 0 and short_random == 0,
                            metadata={"missing_top": short_top, "missing_random": short_random}),
    ]


# The recording code's version; the settings a run used (top_k, random_k, quantile_k, seed, dtype, device)
# enter each materialization's data version, whichever way they were set.
ACTIVATIONS_VERSION = "activations-v1-recorder-v2"


def activations_asset(variant: str) -> dg.AssetsDefinition:
    key = dg.AssetKey([variant, "activations"])
    v = VARIANTS[variant]

    @dg.asset(
        key=key, deps=["model", "sequences"], partitions_def=layers, group_name=variant, kinds={"pytorch", "duckdb"},
        code_version=ACTIVATIONS_VERSION, pool="compute",
        backfill_policy=dg.BackfillPolicy.single_run(), check_specs=_checks(key),
        description=f"Activation records and neuron stats with GELU `{variant}` = `{v.formula}` ({v.meaning}). "
                    "One partition = one layer (tables activation_records, neuron_stats).",
    )
    def _asset(context: dg.AssetExecutionContext, nx: NxResource, config: ActivationsConfig) -> dg.MaterializeResult:
        s = nx.subject
        layer_list = sorted(int(k) for k in context.partition_keys)
        shards = parse_ranges(config.neurons, "neurons", s.ckpt.config.n_neurons)
        runs = contiguous_runs(shards) if shards else [None]
        if len(runs) > 1:
            raise dg.Failure(f"neurons {config.neurons!r} must be one contiguous range, like 0-511")
        out = stage.write_activations(nx.catalog, s, variant, layer_list, nx.recorder, runs[0], report=context.log.info)
        settings = {**nx.activations_settings(), "neurons": f"{runs[0].start}-{runs[0].stop - 1}" if runs[0] else "all"}
        records, stats = out["records"], out["stats"]
        n_seq = out["tokens"] // s.corpus.seq_len
        top_rows = sorted(stats.select(["layer", "neuron", "max_activation", "mean", "variance", "kurtosis"]).to_pylist(),
                          key=lambda r: -r["max_activation"])[:10]
        tokens: dict[tuple[int, int], list[str]] = {}
        for r in out["summary"].select(["layer", "neuron", "rank", "token"]).to_pylist():
            if r["rank"] < 3:
                tokens.setdefault((r["layer"], r["neuron"]), []).append(repr(r["token"]))
        for r in top_rows:
            r["top_mean_tokens"] = " ".join(tokens.get((r["layer"], r["neuron"]), []))
            r["page"] = f"[{r['layer']}/{r['neuron']}]({page_url(r['layer'], r['neuron'])})"  # `nxd viewer --serve`
        return dg.MaterializeResult(
            data_version=nx.data_version(ACTIVATIONS_VERSION, variant=variant, **settings),
            metadata={
                **nx.provenance(), "settings": settings, "batch_size": nx.batch_size, "device": s.device,
                "gelu_variant": variant, "formula": v.formula, "layers": layer_list,
                "dagster/row_count": records.num_rows, "neuron_stats_rows": stats.num_rows,
                "token_summary_rows": out["summary"].num_rows,
                "dagster/column_schema": schema(records),
                "tokens": out["tokens"], "seconds": round(out["seconds"], 2),
                "tokens_per_second": round(out["tokens"] / max(out["seconds"], 1e-9)),
                "catalog_snapshot": out["snapshot"],
                "strongest_neurons": dg.MetadataValue.md(markdown_table(top_rows)),
                "max_activation_distribution": dg.MetadataValue.md(
                    histogram(stats["max_activation"].to_numpy(), label="max activation")),
            },
            check_results=_check_results(key, records, stats, min(nx.top_k, n_seq), min(nx.random_k, n_seq)),
        )

    return _asset


FIX_IMPACT_VERSION = "fix-impact-v2"


@dg.asset(deps=["model", "sequences"], group_name="gelu_fix", kinds={"pytorch", "duckdb"},
          code_version=FIX_IMPACT_VERSION, pool="compute")
def gelu_fix_impact(context: dg.AssetExecutionContext, nx: NxResource) -> dg.MaterializeResult:
    """|post_fix − pre_fix| over every post-MLP activation of every layer on the same tokens:
    median, p90, p99, p99.9, max per layer and overall (layer NULL)."""
    out = stage.write_fix_impact(nx.catalog, nx.subject, batch_size=nx.batch_size, report=context.log.info)
    rows = out["rows"].to_pylist()
    shown = [{"layer": "all" if r["layer"] is None else r["layer"], **{k: r[k] for k in (*QUANTILES, "max", "n")}}
             for r in rows]
    shown.append({"layer": "OpenAI GPT-2 small (published)", **OPENAI_GPT2_SMALL, "max": None, "n": None})
    overall = rows[-1]
    return dg.MaterializeResult(data_version=nx.data_version(FIX_IMPACT_VERSION, **nx.compute_version()), metadata={
        **nx.provenance(), "settings": nx.compute_version(),
        "fix_impact": dg.MetadataValue.md(markdown_table(shown)),
        **{f"overall_{k}": float(overall[k]) for k in (*QUANTILES, "max")},
        "activations_compared": int(overall["n"]), "catalog_snapshot": out["snapshot"],
    })


ACTIVATION_ASSETS = [model_asset, sequences, *[activations_asset(v) for v in VARIANTS], gelu_fix_impact]
