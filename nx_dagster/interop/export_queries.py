"""What `nxd export --format openai` reads from the catalog: one layer of one variant at a time, grouped by
neuron into the plain values that `openai_format` turns into objects."""

from __future__ import annotations

from collections import defaultdict

import duckdb
import numpy as np

from nx_dagster.errors import NxInputError
from nx_dagster.vocab import RANDOM, SCORED_SPLIT


def pick(con: duckdb.DuckDBPyConnection, model: str | None, corpus: str | None) -> tuple[str, str, int, int]:
    """(model, corpus, n_layer, n_neurons): the one model / corpus with activation records unless named."""
    models = [r[0] for r in con.execute("SELECT DISTINCT model FROM neuron_stats ORDER BY 1").fetchall()]
    if model is None:
        if len(models) != 1:
            raise NxInputError("--model", f"the catalog holds activations of {len(models)} models ({', '.join(models)})",
                               "name one with --model")
        model = models[0]
    row = con.execute("SELECT n_layer, n_neurons FROM models WHERE model = ?", [model]).fetchone()
    if row is None or model not in models:
        raise NxInputError(f"--model {model!r}", "has no activations in this catalog",
                           f"choose one of: {', '.join(models) or '(none: run `nxd run` first)'}")
    corpora = [r[0] for r in con.execute(
        "SELECT DISTINCT corpus FROM neuron_stats WHERE model = ? ORDER BY 1", [model]).fetchall()]
    if corpus is None:
        if len(corpora) != 1:
            raise NxInputError("--corpus", f"model {model} has activations on {len(corpora)} corpora ({', '.join(corpora)})",
                               "name one with --corpus")
        corpus = corpora[0]
    elif corpus not in corpora:
        raise NxInputError(f"--corpus {corpus!r}", f"has no activations of model {model}", f"choose one of {', '.join(corpora)}")
    return model, corpus, int(row[0]), int(row[1])


def _grouped(con, sql: str, params: list) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for row in con.execute(sql, params).fetch_arrow_table().to_pylist():
        out[row["neuron"]].append(row)
    return out


def layer_data(con, model: str, corpus: str, variant: str, layer: int) -> dict[str, dict[int, list[dict]]]:
    """Everything one layer's files need, per kind, per neuron (rows in file order)."""
    p = [model, corpus, variant, layer]
    data = {
        "stats": _grouped(con, "SELECT neuron, mean, variance, skewness, kurtosis, quantile_boundaries FROM neuron_stats "
                               "WHERE model = ? AND corpus = ? AND gelu_variant = ? AND layer = ?", p),
        "records": _grouped(con, "SELECT r.neuron, r.kind, r.quantile, r.rank, r.activations, s.tokens "
                                 "FROM activation_records r JOIN sequences s USING (model, corpus, sequence_id) "
                                 "WHERE r.model = ? AND r.corpus = ? AND r.gelu_variant = ? AND r.layer = ? "
                                 "ORDER BY r.neuron, r.kind, r.quantile, r.rank", p),
        "token_activations": _grouped(con, "SELECT neuron, token, mean_activation FROM token_activation_summary "
                                           "WHERE model = ? AND corpus = ? AND gelu_variant = ? AND layer = ? "
                                           "ORDER BY neuron, rank", p),
        "neurons": _grouped(con, "SELECT neuron, direction, sign, other_layer, other_neuron, weight FROM neuron_connections "
                                 "WHERE model = ? AND layer = ? ORDER BY neuron, direction, sign, rank", [model, layer]),
        "token_weights": _grouped(con, "SELECT neuron, direction, sign, token, weight FROM token_connections "
                                       "WHERE model = ? AND layer = ? ORDER BY neuron, direction, sign, rank", [model, layer]),
        "explanations": _explanations(con, model, corpus, variant, layer),
    }
    return data


def _explanations(con, model, corpus, variant, layer) -> dict[int, list[dict]]:
    """Per neuron: one entry per (explanation, simulator) scored on its own variant, with the valid split's
    simulations, top records first (each by rank)."""
    scores = con.execute(
        "SELECT e.neuron, e.explanation_id, e.explanation, s.simulator, s.ev_correlation, s.rsquared, "
        "s.absolute_dev_explained FROM explanations e LEFT JOIN scores s ON s.explanation_id = e.explanation_id "
        "AND s.gelu_variant = e.gelu_variant WHERE e.model = ? AND e.gelu_variant = ? AND e.layer = ? "
        "AND e.explanation IS NOT NULL ORDER BY e.neuron, e.explainer, e.candidate, s.simulator",
        [model, variant, layer]).fetch_arrow_table().to_pylist()
    sims: dict[tuple, list] = defaultdict(list)
    for r in con.execute(
            "SELECT m.explanation_id, m.simulator, q.tokens, m.expected_activations, m.true_activations "
            "FROM simulations m JOIN activation_records a ON a.model = m.model AND a.gelu_variant = m.gelu_variant "
            "AND a.layer = m.layer AND a.neuron = m.neuron AND a.kind = m.kind AND a.sequence_id = m.sequence_id "
            "AND a.corpus = ? JOIN sequences q ON q.model = a.model AND q.corpus = a.corpus AND q.sequence_id = a.sequence_id "
            "WHERE m.model = ? AND m.gelu_variant = ? AND m.explanation_gelu_variant = ? AND m.layer = ? "
            "AND m.split = ? AND m.expected_activations IS NOT NULL "
            "ORDER BY m.explanation_id, m.simulator, m.kind = ?, a.rank",
            [corpus, model, variant, variant, layer, SCORED_SPLIT, RANDOM]).fetch_arrow_table().to_pylist():
        sims[(r["explanation_id"], r["simulator"])].append(
            {"tokens": r["tokens"], "expected": r["expected_activations"], "true": r["true_activations"],
             "ev_correlation": _corr(r["true_activations"], r["expected_activations"])})
    out: dict[int, list[dict]] = defaultdict(list)
    for s in scores:
        out[s["neuron"]].append({**s, "sequences": sims.get((s["explanation_id"], s["simulator"]), [])})
    return out


def _corr(a, b) -> float | None:
    """Pearson correlation of one sequence's true and simulated activations; None when either is constant."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x @ x) * (y @ y)))
    return float(x @ y) / denom if len(x) > 1 and denom > 0 and np.isfinite(denom) else None
