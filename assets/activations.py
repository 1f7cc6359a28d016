"""Assets of the `activations` stage: model → sequences → {pre_fix, post_fix}/activations, gelu_fix_impact.

The GELU variant is part of the asset key, so the UI shows two lineages. Activations are partitioned
by layer (dynamic partitions registered by `model`); a backfill of many layers runs as one pass.
"""


import warnings

import dagster as dg
import numpy as np
import pyarrow.compute as pc

from assets import metadata as meta
from assets.metadata import schema
from assets.partitions import layers, register_layers
from assets.resources import NxResource
from nx_dagster.ranges import contiguous_runs, parse_ranges
from nx_dagster.vocab import GELU_FORMULAS, GELU_MEANINGS, GELU_VARIANTS, RANDOM, RECORDER_VERSION, TOP

warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")

# OpenAI's published |post_fix − pre_fix| for GPT-2 small, for comparison in the UI.
OPENAI_GPT2_SMALL = {"median": 0.0090, "p90": 0.0252, "p99": 0.0839, "p999": 0.1736}


@dg.asset(key="model", group_name="corpus", kinds={"pytorch", "duckdb"}, code_version="model-v1")
def model_asset(context: dg.AssetExecutionContext, nx: NxResource) -> dg.MaterializeResult:
    """The subject checkpoint: one row of `models`. Its data version is the checkpoint's hash, so new
    weights mark everything downstream stale. Registers one `layers` partition per layer."""
    from nx_dagster.stages import activations as stage  # torch code: imported by a run, not by the code location

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
    from nx_dagster.stages import activations as stage

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


def _check_results(key, records, stats, expect_top: int, expect_random: int, about: dict) -> list[dg.AssetCheckResult]:
    """The three checks over every layer of the run; `about` (data root, model, corpus) joins their metadata."""
    nan_records = int(pc.sum(pc.is_nan(pc.list_flatten(records["activations"]))).as_py() or 0)
    nan_stats = int(pc.sum(pc.is_nan(stats["mean"])).as_py() or 0) + int(stats["mean"].null_count)
    kind = records["kind"].to_numpy(zero_copy_only=False)
    neuron = records["neuron"].to_numpy()
    layer = records["layer"].to_numpy()
    mx = records["max_activation"].to_numpy()
    top = kind == TOP
    # rows are ordered by neuron then rank; within a neuron the max must not increase with rank
    same = (neuron[1:] == neuron[:-1]) & (layer[1:] == layer[:-1]) & top[1:] & top[:-1]
    unsorted = int(np.sum(same & (mx[1:] > mx[:-1])))
    n_neurons = stats.num_rows
    short_top = n_neurons * expect_top - int(top.sum())
    short_random = n_neurons * expect_random - int((kind == RANDOM).sum())
    return [
        dg.AssetCheckResult(check_name="no_nan", asset_key=key, passed=nan_records + nan_stats == 0,
                            metadata={**about, "nan_activations": nan_records, "nan_or_null_means": nan_stats}),
        dg.AssetCheckResult(check_name="top_records_sorted", asset_key=key, passed=unsorted == 0,
                            metadata={**about, "out_of_order_pairs": unsorted}),
        dg.AssetCheckResult(check_name="counts_complete", asset_key=key, passed=short_top == 0 and short_random == 0,
                            metadata={**about, "missing_top": short_top, "missing_random": short_random}),
    ]


# The recording code's version; the settings a run used (top_k, random_k, quantile_k, seed, dtype, device)
# enter each materialization's data version, whichever way they were set.
ACTIVATIONS_VERSION = f"activations-v1-{RECORDER_VERSION}"
# v3: the differences of the recording's own (neuron-major) forward passes, float-bit buckets
FIX_IMPACT_VERSION = "fix-impact-v3"
ACTIVATION_KEYS = {v: dg.AssetKey([v, "activations"]) for v in GELU_VARIANTS}
FIX_IMPACT_KEY = dg.AssetKey("gelu_fix_impact")


def _specs() -> list[dg.AssetSpec]:
    specs = [dg.AssetSpec(
        key, deps=["model", "sequences"], partitions_def=layers, group_name=v, kinds={"pytorch", "duckdb"},
        code_version=ACTIVATIONS_VERSION,
        description=f"Activation records and neuron stats with GELU `{v}` = `{GELU_FORMULAS[v]}` "
                    f"({GELU_MEANINGS[v]}). One partition = one layer (tables activation_records, "
                    "neuron_stats, token_activation_summary).") for v, key in ACTIVATION_KEYS.items()]
    specs.append(dg.AssetSpec(
        FIX_IMPACT_KEY, deps=["model", "sequences"], group_name="gelu_fix", kinds={"pytorch", "duckdb"},
        code_version=FIX_IMPACT_VERSION,
        description="|post_fix − pre_fix| over every post-MLP activation of every layer on the same tokens: median, "
                    "p90, p99, p99.9, max per layer and overall (layer NULL). Computed in the recording pass when "
                    "materialized with the activations."))
    return specs


@dg.multi_asset(
    name="activations", specs=_specs(), check_specs=[c for key in ACTIVATION_KEYS.values() for c in _checks(key)],
    can_subset=True, pool="compute", backfill_policy=dg.BackfillPolicy.single_run(),
)
def activations(context: dg.AssetExecutionContext, nx: NxResource, config: ActivationsConfig):
    """Both GELU lineages and the fix impact from one pass over the corpus: each batch runs each selected
    variant once, and |post_fix − pre_fix| comes from those same activations. Any subset works: one
    variant, some layers, or the fix impact alone (then nothing is recorded)."""
    from nx_dagster.activations.fix_impact import QUANTILES
    from nx_dagster.stages import activations as stage

    s = nx.subject
    selected = context.selected_asset_keys
    variants = [v for v, key in ACTIVATION_KEYS.items() if key in selected]
    fix = FIX_IMPACT_KEY in selected
    layer_list = sorted(int(k) for k in context.partition_keys) if variants else []
    shards = parse_ranges(config.neurons, "neurons", s.ckpt.config.n_neurons)
    runs = contiguous_runs(shards) if shards else [None]
    if len(runs) > 1:
        raise dg.Failure(f"neurons {config.neurons!r} must be one contiguous range, like 0-511")
    out = stage.write_activations(nx.catalog, s, variants, layer_list, nx.recorder, runs[0], report=context.log.info,
                                  fix_impact=fix)
    settings = {**nx.activations_settings(), "neurons": f"{runs[0].start}-{runs[0].stop - 1}" if runs[0] else "all"}
    n_seq = out["tokens"] // s.corpus.seq_len
    run_wide = {**nx.provenance(), "batch_size": nx.batch_size, "device": s.device, "tokens": out["tokens"],
                "seconds": round(out["seconds"], 2),
                "tokens_per_second": round(out["tokens"] / max(out["seconds"], 1e-9)),
                "catalog_snapshot": out["snapshot"],
                "same_pass": ", ".join([*(str(ACTIVATION_KEYS[v].to_user_string()) for v in variants),
                                        *(["gelu_fix_impact"] if fix else [])])}
    for v in variants:
        key, tables = ACTIVATION_KEYS[v], out["variants"][v]
        for layer in layer_list:
            context.add_asset_metadata(meta.layer_metadata(tables, layer), asset_key=key, partition_key=str(layer))
        yield dg.MaterializeResult(
            asset_key=key, data_version=nx.data_version(ACTIVATIONS_VERSION, variant=v, **settings),
            metadata={**run_wide, "settings": settings, "gelu_variant": v,
                      "formula": dg.MetadataValue.text(GELU_FORMULAS[v]),
                      "dagster/column_schema": schema(tables["records"]), "pass_layers": layer_list},
            check_results=_check_results(key, tables["records"], tables["stats"], min(nx.top_k, n_seq),
                                         min(nx.random_k, n_seq), {**nx.provenance(), "layers": layer_list}),
        )
    if fix:
        rows = out["fix_impact"].to_pylist()
        overall = rows[-1]
        yield dg.MaterializeResult(
            asset_key=FIX_IMPACT_KEY, data_version=nx.data_version(FIX_IMPACT_VERSION, **nx.compute_version()),
            metadata={**run_wide, "settings": nx.compute_version(), "dagster/row_count": len(rows),
                      "fix_impact": meta.fix_impact_table(rows, OPENAI_GPT2_SMALL),
                      **{f"overall_{k}": float(overall[k]) for k in (*QUANTILES, "max")},
                      "activations_compared": int(overall["n"])})


ACTIVATION_ASSETS = [model_asset, sequences, activations]
