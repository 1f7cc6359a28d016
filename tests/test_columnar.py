"""The columnar offline explainer and simulator (explain/columnar.py, what the stages run) give exactly
what the per-record path (explain_neurons / simulate over NeuronRecords) gives: on the main job's real
records, and on records made to hit every edge (dead neurons, no train records, blank and quoted tokens,
NaN, neurons without records)."""

import math

import pyarrow as pa
import pytest

from nx_dagster.errors import NxInputError
from nx_dagster.explain import (
    explain_neurons, neuron_records_from_arrow, pair_by_neuron, simulate, simulations_table,
)
from nx_dagster.explain.columnar import RecordColumns, token_lookup_explanations, token_lookup_simulations
from nx_dagster.explain.records import Explanation
from nx_dagster.stages.explain import load_record_table
from nx_dagster.storage import Catalog


def _same(table: pa.Table, explanations=None) -> list[Explanation]:
    """Assert both paths agree on `table`'s records; return the explanations."""
    records, cols = neuron_records_from_arrow(table), RecordColumns.from_arrow(table)
    expl = explain_neurons(records)
    assert token_lookup_explanations(cols) == expl
    halves = (range(0, len(records) // 2), range(len(records) // 2, len(records)))  # the stage's chunks
    assert sum((token_lookup_explanations(cols, h) for h in halves), []) == expl
    expl = expl if explanations is None else explanations
    old = simulations_table(simulate(pair_by_neuron(expl, records), "token_lookup"))
    new = token_lookup_simulations(expl, cols)
    assert new.schema == old.schema and new.equals(old)
    return expl


def test_the_main_jobs_records_give_the_same_explanations_and_simulations(bundled_run):
    cat = Catalog(bundled_run / "nx_data")
    (row,) = cat.query("SELECT DISTINCT model, corpus FROM activation_records").to_pylist()
    model, corpus = row["model"], row["corpus"]
    # a sample of the neurons of the first and last layer: the per-record path takes ~10 s for all of them
    tables = {v: load_record_table(cat, model, corpus, v, [0, 3], range(0, 96)) for v in ("pre_fix", "post_fix")}
    expl = {v: _same(t) for v, t in tables.items()}
    assert sum(e.explanation is not None for e in expl["post_fix"]) > 0.9 * len(expl["post_fix"])
    _same(tables["post_fix"], expl["pre_fix"])  # pre-fix explanations scored on post-fix records


def _rows(rows: list[dict]) -> pa.Table:
    base = {"model": "m", "gelu_variant": "post_fix", "kind": "top", "split": "train", "rank": 0}
    rows = [{**base, **r} for r in rows]
    return pa.table({
        "model": pa.array([r["model"] for r in rows], pa.string()),
        "gelu_variant": pa.array([r["gelu_variant"] for r in rows], pa.string()),
        "layer": pa.array([r["layer"] for r in rows], pa.int32()),
        "neuron": pa.array([r["neuron"] for r in rows], pa.int32()),
        "kind": pa.array([r["kind"] for r in rows], pa.string()),
        "split": pa.array([r["split"] for r in rows], pa.string()),
        "rank": pa.array([r["rank"] for r in rows], pa.int32()),
        "sequence_id": pa.array([r["sid"] for r in rows], pa.int64()),
        "activations": pa.array([r["acts"] for r in rows], pa.list_(pa.float32())),
        "tokens": pa.array([r["tokens"] for r in rows], pa.list_(pa.string())),
    })


def test_edge_cases_give_the_same_rows():
    toks = [" Paris", "paris", " ", "", "ünï", " the", '"q"', "x"]
    rows = [
        # neuron 0: ties broken by token string, a blank token named, more than 5 candidates
        dict(layer=0, neuron=0, sid=1, acts=[2.0, 2.0, 3.0, 1.0, 2.5, 1.5, 2.0, 0.1], tokens=toks),
        dict(layer=0, neuron=0, sid=2, rank=1, split="valid", acts=[0.0] * 8, tokens=toks),
        dict(layer=0, neuron=0, sid=3, kind="random", split="calibration", rank=None, acts=[1.0] * 8, tokens=toks),
        dict(layer=0, neuron=0, sid=4, kind="random", split="valid", rank=2, acts=[0.5] * 8, tokens=toks[::-1]),
        dict(layer=0, neuron=0, sid=5, kind="random", split="valid", rank=1, acts=[0.5] * 8, tokens=toks),
        dict(layer=0, neuron=0, sid=6, split="test", acts=[9.0] * 8, tokens=toks),
        # neuron 1: no positive activation (and a NaN) -> a failed explanation, simulated as failures
        dict(layer=0, neuron=1, sid=1, acts=[-0.1, math.nan, 0.0, -1, -1, -1, -1, -1], tokens=toks),
        dict(layer=0, neuron=1, sid=2, split="valid", acts=[0.0] * 8, tokens=toks),
        # neuron 2 (layer 1): no train records at all; an empty record
        dict(layer=1, neuron=2, sid=1, split="valid", acts=[1.0] * 8, tokens=toks),
        dict(layer=1, neuron=2, sid=7, split="calibration", acts=[], tokens=[]),
        # neuron 3: NaN before a positive value of the same token
        dict(layer=1, neuron=3, sid=1, acts=[math.nan, 4.0, 0, 0, 0, 0, 0, 0], tokens=[" Paris"] * 8),
        dict(layer=1, neuron=3, sid=2, split="calibration", acts=[1.0] * 8, tokens=toks),
    ]
    expl = _same(_rows(rows[::-1]))  # input order does not matter
    assert [e.failure_reason is None for e in expl] == [True, False, False, True]
    words = Explanation("m", "post_fix", 0, 0, "token_lookup", None, "v", 0, "fires on the word paris and unï")
    stray = Explanation("m", "post_fix", 5, 5, "token_lookup", None, "v", 0, "no records of this neuron")
    _same(_rows(rows), expl + [words, stray])


def test_tokens_and_activations_of_different_lengths_are_a_named_error():
    bad = _rows([dict(layer=0, neuron=0, sid=9, acts=[1.0, 2.0], tokens=["a"])])
    with pytest.raises(NxInputError, match="sequence 9.*1 tokens but 2 activations"):
        RecordColumns.from_arrow(bad)
    with pytest.raises(NxInputError, match="sequence 9.*1 tokens but 2 activations"):
        neuron_records_from_arrow(bad)
