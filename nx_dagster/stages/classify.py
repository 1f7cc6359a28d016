"""Stages of the classification and intruder scores: read explanations and records, ask a judge, write.

`write_classification_scores`: detection and fuzzing scores of `explainer`'s explanations written from one
lineage, judged on another lineage's records (the same one, or post_fix for pre_fix explanations), with
intervals and nulls (`explain.classify`); replaces those partitions of `classification_scores`.
`write_intruder_scores`: per neuron of one lineage (no explanation); replaces those partitions of
`intruder_scores`. Both read every record kind (the quantile records give excerpts across the whole range
of activation) and commit once.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from nx_dagster.explain import classify, pair_by_neuron
from nx_dagster.stages.activations import Progress
from nx_dagster.stages.explain import load_explanations, load_records, loaded, sync_calls
from nx_dagster.storage import Catalog, schema
from nx_dagster.vocab import DETECTION, FUZZING, RECORD_KINDS

CLASSIFIERS = (DETECTION, FUZZING)


def _keys(model: str, variant: str, layers: list[int], neurons: range | None, **more) -> dict:
    keys = {"model": model, "gelu_variant": variant, "layer": layers, **more}
    if neurons is not None:
        keys["neuron"] = list(neurons)
    return keys


def write_classification_scores(catalog: Catalog, model: str, corpus: str, explanation_variant: str,
                                scored_variant: str, layers: list[int], neurons: range | None, explainer: str,
                                judge: classify.Judge, scorers: tuple[str, ...] = CLASSIFIERS,
                                null_fraction: float | None = None, seed: int = 0,
                                report: Progress | None = None) -> dict:
    t0 = time.perf_counter()
    expls = load_explanations(catalog, model, explanation_variant, layers, neurons, explainer)
    records = load_records(catalog, model, corpus, scored_variant, layers, neurons, RECORD_KINDS)
    loaded(report, f"{explanation_variant} explanations judged on {scored_variant} ({judge.name}):", len(records), t0)
    pairs = pair_by_neuron(expls, records)
    rows = [r for scorer in scorers for r in classify.classification_rows(scorer, pairs, judge, null_fraction, seed)]
    table = schema.rows_to_table("classification_scores", rows)
    keys = _keys(model, scored_variant, layers, neurons, explanation_gelu_variant=explanation_variant,
                 explainer=explainer, judge=judge.name, scorer=list(scorers))
    snap = catalog.replace("classification_scores", table, keys,
                           f"classification scores {model} {explanation_variant}->{scored_variant} {judge.name} "
                           f"layers {layers}")
    return {"table": table, "snapshot": snap, "seconds": time.perf_counter() - t0,
            "llm": sync_calls(catalog, judge.client)}


def write_intruder_scores(catalog: Catalog, model: str, corpus: str, variant: str, layers: list[int],
                          neurons: range | None, judge: classify.Judge, seed: int = 0,
                          report: Progress | None = None) -> dict:
    t0 = time.perf_counter()
    records = load_records(catalog, model, corpus, variant, layers, neurons, RECORD_KINDS)
    loaded(report, f"{variant} intruder trials ({judge.name}):", len(records), t0)
    table = schema.rows_to_table("intruder_scores", classify.intruder_rows(records, judge, seed))
    snap = catalog.replace("intruder_scores", table, _keys(model, variant, layers, neurons, judge=judge.name),
                           f"intruder scores {model} {variant} {judge.name} layers {layers}")
    return {"table": table, "snapshot": snap, "seconds": time.perf_counter() - t0,
            "llm": sync_calls(catalog, judge.client)}


def classification_summary(table: pa.Table) -> list[dict]:
    """Per scorer: neurons, failures, mean balanced accuracy, mean null, and the share of the neurons with
    a null whose interval lies above it."""
    out = []
    for scorer in CLASSIFIERS:
        t = table.filter(pc.equal(table["scorer"], scorer))
        if not t.num_rows:
            continue
        ba, low = t["balanced_accuracy"].to_pylist(), t["balanced_accuracy_ci_low"].to_pylist()
        null = t["null_balanced_accuracy"].to_pylist()
        scored = [b for b in ba if b is not None]
        nulls = [(lo, n) for lo, n in zip(low, null) if lo is not None and n is not None]
        out.append({"scorer": scorer, "neurons": t.num_rows, "failures": t.num_rows - len(scored),
                    "mean_balanced_accuracy": sum(scored) / len(scored) if scored else None,
                    "mean_null": sum(n for _, n in nulls) / len(nulls) if nulls else None,
                    "share_above_null": sum(lo > n for lo, n in nulls) / len(nulls) if nulls else None})
    return out
