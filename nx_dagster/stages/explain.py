"""Stages `explanations` and `scores`: explain neurons from their train records, simulate them from
the explanation on the valid and calibration records, and score the simulations.

Explanations remember the variant of the activations they were written from; simulations and scores
record both that variant and the variant they were scored on, so pre-fix explanations can be scored
on post-fix activations."""

from __future__ import annotations

import logging
import time
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from nx_dagster.errors import NxInputError
from nx_dagster.explain import (
    LLMClient, explain_neurons, explanation_variants, explanations_from_table, explanations_table,
    neuron_records_from_arrow, pair_by_neuron, score_simulations, simulate, simulations_table, sync_ledger,
)
from nx_dagster.explain.baselines import as_null, default_null_fraction, ev_correlation_intervals, null_partners
from nx_dagster.explain.batch_scoring import unscored_rows
from nx_dagster.explain.columnar import RecordColumns, token_lookup_explanations, token_lookup_simulations
from nx_dagster.explain.records import Explanation, NeuronRecords
from nx_dagster.stages.activations import Progress, progress
from nx_dagster.storage import Catalog
from nx_dagster.vocab import SIMULATED_KINDS, TOKEN_LOOKUP

log = logging.getLogger(__name__)


def _in(col: str, values: list[int]) -> str:
    return f"{col} IN ({', '.join(str(int(v)) for v in values)})"


def _neuron_filter(neurons: range | None, alias: str = "") -> str:
    return "" if neurons is None else f" AND {alias}neuron BETWEEN {neurons.start} AND {neurons.stop - 1}"


def load_record_table(catalog: Catalog, model: str, corpus: str, variant: str, layers: list[int],
                      neurons: range | None, kinds: tuple[str, ...] = SIMULATED_KINDS) -> pa.Table:
    """The rows of `kinds` (top and random) of `activation_records` of `variant` with their sequences'
    `tokens`. NxInputError when there are none, or when a record's sequence is gone."""
    table = catalog.query(
        "SELECT r.model, r.gelu_variant, r.layer, r.neuron, r.kind, r.split, r.rank, r.sequence_id, r.activations, "
        "s.tokens FROM activation_records r LEFT JOIN sequences s ON s.model = r.model AND s.corpus = r.corpus "
        "AND s.sequence_id = r.sequence_id WHERE r.model = ? AND r.corpus = ? AND r.gelu_variant = ? AND "
        f"{_in('r.layer', layers)}{_neuron_filter(neurons, 'r.')} AND r.kind IN ({', '.join('?' * len(kinds))}) "
        "ORDER BY r.layer, r.neuron, r.kind, r.quantile, r.rank", [model, corpus, variant, *kinds])
    if table.num_rows == 0:
        raise NxInputError(f"activation records of {model} ({variant}, layers {layers})", "do not exist yet",
                           "materialize the activations stage for these layers first")
    orphans = table["tokens"].null_count
    if orphans:  # never drop records silently: their sequences were replaced or deleted
        raise NxInputError(f"activation records of {model} on corpus {corpus!r} ({variant}, layers {layers})",
                           f"{orphans} records point at sequences that are not in the `sequences` table",
                           "re-materialize `sequences` and then the activations of these layers for this corpus")
    return table


def load_records(catalog: Catalog, model: str, corpus: str, variant: str, layers: list[int],
                 neurons: range | None, kinds: tuple[str, ...] = SIMULATED_KINDS) -> list[NeuronRecords]:
    """The records of `kinds` as one NeuronRecords per neuron (what the LLM methods and the judges work on),
    read at one snapshot; each sequence's tokens are read once and shared by its records. NxInputError as
    `load_record_table`."""
    where = (f"r.model = ? AND r.corpus = ? AND r.gelu_variant = ? AND {_in('r.layer', layers)}"
             f"{_neuron_filter(neurons, 'r.')} AND r.kind IN ({', '.join('?' * len(kinds))})")
    params = [model, corpus, variant, *kinds]
    with catalog.session(read_only=True) as con:
        records = catalog.retry(lambda: con.execute(
            "SELECT r.model, r.gelu_variant, r.layer, r.neuron, r.kind, r.split, r.rank, r.sequence_id, r.activations "
            f"FROM activation_records r WHERE {where} ORDER BY r.layer, r.neuron, r.kind, r.quantile, r.rank",
            params).fetch_arrow_table())
        tokens = catalog.retry(lambda: con.execute(
            "SELECT sequence_id, tokens FROM sequences WHERE model = ? AND corpus = ? AND sequence_id IN "
            f"(SELECT r.sequence_id FROM activation_records r WHERE {where})", [model, corpus, *params]
        ).fetch_arrow_table())
    if records.num_rows == 0:
        raise NxInputError(f"activation records of {model} ({variant}, layers {layers})", "do not exist yet",
                           "materialize the activations stage for these layers first")
    known = pa.compute.is_in(records["sequence_id"], value_set=tokens["sequence_id"])
    orphans = records.num_rows - pa.compute.sum(known).as_py()
    if orphans:  # never drop records silently: their sequences were replaced or deleted
        raise NxInputError(f"activation records of {model} on corpus {corpus!r} ({variant}, layers {layers})",
                           f"{orphans} records point at sequences that are not in the `sequences` table",
                           "re-materialize `sequences` and then the activations of these layers for this corpus")
    return neuron_records_from_arrow(records, tokens)


def loaded(report: Progress | None, what: str, n_neurons: int, t0: float) -> None:
    if report:
        report(f"{what} {n_neurons:,} neurons' records loaded in {time.perf_counter() - t0:.1f} s")


def _with(table: pa.Table, name: str, value) -> pa.Table:
    """`table` with `value` in column `name` of every row (as the column's type)."""
    i = table.schema.get_field_index(name)
    field = table.schema.field(i)
    return table.set_column(i, field, pa.repeat(pa.scalar(value, field.type), table.num_rows))


def _in_chunks(items: list, work: Callable[[list], list], label: str, report: Progress | None,
               llm: bool) -> list:
    """work(items) in ~10 chunks, reporting neurons done, rate and time left after each. An LLM
    method gets them in one call: its client reports progress and keeps its concurrency."""
    size = len(items) if llm or not items else max(1, -(-len(items) // 10))
    on_chunk = progress(label, len(items), None if llm else report, every_s=0.0, unit="neurons")
    out: list = []
    for i in range(0, len(items), size):
        out += work(items[i:i + size])
        on_chunk(0, min(i + size, len(items)))
    return out


def write_explanations(catalog: Catalog, model: str, corpus: str, variant: str, layers: list[int],
                       neurons: range | None, explainer: str, client: LLMClient | None, n_candidates: int = 1,
                       report: Progress | None = None) -> dict:
    """Explain `layers` (and `neurons`) from `variant`'s train records; replace those partitions of
    `explanations` in one commit. `report` gets progress lines (offline explainer; an LLM client
    reports its own)."""
    t0 = time.perf_counter()
    table = load_record_table(catalog, model, corpus, variant, layers, neurons)
    label = f"{variant} explanations ({explainer})"
    if explainer == TOKEN_LOOKUP:  # offline: columnar, the same explanations as explain_neurons gives
        cols = RecordColumns.from_arrow(table)
        loaded(report, f"{variant} explanations:", len(cols.neurons), t0)
        expl = _in_chunks(list(range(len(cols.neurons))),
                          lambda chunk: token_lookup_explanations(cols, range(chunk[0], chunk[-1] + 1)),
                          label, report, False)
    else:
        records = neuron_records_from_arrow(table)
        loaded(report, f"{variant} explanations:", len(records), t0)
        expl = _in_chunks(records, lambda chunk: explain_neurons(chunk, explainer, client, n_candidates),
                          label, report, client is not None)
    table = explanations_table(expl)
    keys = {"model": model, "gelu_variant": variant, "layer": layers, "explainer": explainer}
    if neurons is not None:
        keys["neuron"] = list(neurons)
    snap = catalog.replace("explanations", table, keys, f"explanations {model} {variant} {explainer} layers {layers}")
    calls = sync_calls(catalog, client)
    return {"table": table, "snapshot": snap, "seconds": time.perf_counter() - t0, "llm": calls}


def sync_calls(catalog: Catalog, client: LLMClient | None) -> dict:
    """Copy the calls `client` made into `llm_calls`; their summary and the session's counts."""
    if client is None:
        return {}
    keys = list(client.keys_used)
    if keys:
        sync_ledger(catalog, client.ledger, keys)
    return {**client.ledger.summary(keys), **{f"session_{k}": v for k, v in vars(client.stats).items()}}


def load_explanations(catalog: Catalog, model: str, variant: str, layers: list[int], neurons: range | None,
                      explainer: str) -> list[Explanation]:
    """`explainer`'s explanations written from `variant`; NxInputError when there are none."""
    table = catalog.query(
        f"SELECT * FROM explanations WHERE model = ? AND gelu_variant = ? AND explainer = ? AND {_in('layer', layers)}"
        f"{_neuron_filter(neurons)} ORDER BY layer, neuron, candidate", [model, variant, explainer])
    if table.num_rows == 0:
        raise NxInputError(f"{explainer} explanations of {model} ({variant}, layers {layers})",
                           "do not exist yet", "materialize the explanations stage for these layers first")
    return explanations_from_table(table)


def write_scores(catalog: Catalog, model: str, corpus: str, explanation_variant: str, scored_variant: str,
                 layers: list[int], neurons: range | None, explainer: str, simulator: str,
                 client: LLMClient | None, report: Progress | None = None, null_fraction: float | None = None,
                 seed: int = 0) -> dict:
    """Simulate and score `explainer`'s explanations written from `explanation_variant` activations on
    the `scored_variant` records, with each score's bootstrap interval and, for `null_fraction` of the
    neurons (default: `baselines.default_null_fraction`), its null; replaces those partitions of
    simulations and scores in one commit. `report` gets progress lines (offline simulator; an LLM client
    reports its own)."""
    t0 = time.perf_counter()
    expls = load_explanations(catalog, model, explanation_variant, layers, neurons, explainer)
    table = load_record_table(catalog, model, corpus, scored_variant, layers, neurons)
    label = f"{explanation_variant} explanations on {scored_variant} ({simulator})"
    what = f"{label}: {len(expls):,} explanations and"
    fraction = default_null_fraction(simulator) if null_fraction is None else null_fraction
    partners = null_partners(expls, fraction, seed, simulator)
    nulls = [as_null(partners[e.explanation_id], e) for e in expls if e.explanation_id in partners]
    if simulator == TOKEN_LOOKUP:  # offline: columnar, the same rows as simulate gives
        cols = RecordColumns.from_arrow(table)
        loaded(report, what, len(cols.neurons), t0)

        def run(chosen: list[Explanation], name: str) -> pa.Table:
            paired = [e for e in chosen if cols.has_neuron(e.model, e.layer, e.neuron)]
            return pa.concat_tables(_in_chunks(paired, lambda chunk: [token_lookup_simulations(chunk, cols)], name,
                                               report, False)) if paired else simulations_table([])
    else:
        records = neuron_records_from_arrow(table)
        loaded(report, what, len(records), t0)

        def run(chosen: list[Explanation], name: str) -> pa.Table:
            return simulations_table(_in_chunks(pair_by_neuron(chosen, records),
                                                lambda chunk: simulate(chunk, simulator, client), name, report,
                                                client is not None))
    sims = _with(run(expls, label), "explainer", explainer)
    scores = score_simulations(sims, explanation_variants(expls))
    model_used = sims.column("simulator_model")[0].as_py() if sims.num_rows else None
    scores = pa.concat_tables([scores, unscored_rows(expls, scores, scored_variant, simulator, model_used)])
    scores = _with(scores, "explainer", explainer)
    null_scores = score_simulations(run(nulls, f"{label}, nulls"), explanation_variants(expls)) if nulls else None
    scores = _with_baselines(scores, sims, null_scores, partners, seed)
    keys = {"model": model, "gelu_variant": scored_variant, "explanation_gelu_variant": explanation_variant,
            "layer": layers, "explainer": explainer, "simulator": simulator}
    if neurons is not None:
        keys["neuron"] = list(neurons)
    snap = catalog.replace_many([("simulations", sims, keys), ("scores", scores, keys)],
                                f"scores {model} {explanation_variant}->{scored_variant} {simulator} layers {layers}")
    return {"simulations": sims.num_rows, "scores": scores, "snapshot": snap, "seconds": time.perf_counter() - t0,
            "llm": sync_calls(catalog, client)}


def _with_baselines(scores: pa.Table, sims: pa.Table, null_scores: pa.Table | None,
                    partners: dict[str, Explanation], seed: int) -> pa.Table:
    """`scores` with each row's ev_correlation interval and seed, and its null (partner id and score)."""
    intervals = ev_correlation_intervals(sims, seed)
    null_ev = {} if null_scores is None else dict(zip(
        zip(null_scores["explanation_id"].to_pylist(), null_scores["gelu_variant"].to_pylist()),
        null_scores["ev_correlation"].to_pylist()))
    keys = list(zip(scores["explanation_id"].to_pylist(), scores["gelu_variant"].to_pylist()))
    scored = [ev is not None for ev in scores["ev_correlation"].to_pylist()]
    found = [intervals.get(k) if ok else None for k, ok in zip(keys, scored)]
    partner = [partners.get(k[0]) for k in keys]
    columns = {
        "ev_correlation_ci_low": [f[0] if f else None for f in found],
        "ev_correlation_ci_high": [f[1] if f else None for f in found],
        "bootstrap_seed": [f[2] if f else None for f in found],
        "null_explanation_id": [p.explanation_id if p else None for p in partner],
        "null_ev_correlation": [null_ev.get(k) if p else None for k, p in zip(keys, partner)],
    }
    for name, values in columns.items():
        i = scores.schema.get_field_index(name)
        scores = scores.set_column(i, scores.schema.field(i), pa.array(values, scores.schema.field(i).type))
    return scores


def score_summary(scores: pa.Table) -> dict:
    ev = scores["ev_correlation"]
    valid = pc.drop_null(ev)
    return {"neurons_scored": scores.num_rows, "failures": scores.num_rows - len(valid),
            "mean_ev_correlation": pc.mean(valid).as_py() if len(valid) else None,
            "median_ev_correlation": pc.approximate_median(valid).as_py() if len(valid) else None}


def lineage_comparison(catalog: Catalog, model: str, explanation_variant: str, scored_variant: str,
                       layers: list[int], explainer: str, simulator: str) -> list[dict]:
    """Per layer: mean ev_correlation of the same explanations scored on their own variant and on the other."""
    return catalog.query(
        "SELECT layer, count(*) AS neurons, avg(own.ev_correlation) AS own_variant_mean, "
        "avg(other.ev_correlation) AS other_variant_mean, avg(other.ev_correlation - own.ev_correlation) AS mean_change "
        "FROM scores own JOIN scores other USING (explanation_id, model, layer, neuron, explainer, simulator) "
        "WHERE own.model = ? AND own.explanation_gelu_variant = ? AND own.gelu_variant = ? AND other.gelu_variant = ? "
        f"AND own.explainer = ? AND own.simulator = ? AND {_in('layer', layers)} GROUP BY layer ORDER BY layer",
        [model, explanation_variant, explanation_variant, scored_variant, explainer, simulator]).to_pylist()
