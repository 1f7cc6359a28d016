"""Everything the catalog knows about some neurons of one layer, gathered into `NeuronView`s.

One query per table for a whole layer (or a list of its neurons), grouped by neuron in Python, so the
card (one neuron) and the browser (every neuron) share one code path and writing thousands of pages
costs a handful of queries per layer. The connection is any catalog connection, typically one opened
at a snapshot by `source.open_at`.

Activations are raw post-GELU values; simulated `expected` values are on the simulator's 0-10 scale.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import duckdb

from nx_dagster.vocab import GELU_VARIANTS, POST_FIX, PRE_FIX, SCORED_SPLIT, TOP

# (explanation written from, scored on): both lineages, then the cross-lineage score.
SCORE_LINES = ((PRE_FIX, PRE_FIX), (POST_FIX, POST_FIX), (PRE_FIX, POST_FIX))


@dataclass
class Record:
    """One activation record: a sequence with the neuron's activation on each of its tokens."""

    kind: str
    rank: int
    split: str | None
    sequence_id: int
    max_activation: float
    tokens: list[str]
    activations: list[float]


@dataclass
class Simulated:
    """One scored sequence (split `valid`): the true activations beside the simulation (0-10 expected values)."""

    sequence_id: int
    kind: str
    split: str | None
    tokens: list[str]
    true: list[float]
    expected: list[float] | None
    failure_reason: str | None


@dataclass
class Score:
    explanation_id: str
    explanation_gelu_variant: str
    gelu_variant: str
    explainer: str | None
    simulator: str
    simulator_model: str | None
    ev_correlation: float | None
    ev_correlation_top: float | None
    ev_correlation_random: float | None
    rsquared: float | None
    absolute_dev_explained: float | None
    failure_reason: str | None
    simulations: list[Simulated] = field(default_factory=list)


@dataclass
class NeuronView:
    model: str
    layer: int
    neuron: int
    stats: dict[str, dict] = field(default_factory=dict)  # variant -> neuron_stats row
    records: dict[str, list[Record]] = field(default_factory=dict)  # variant -> top records by rank
    explanations: list[dict] = field(default_factory=list)  # explanations rows
    scores: list[Score] = field(default_factory=list)
    top_tokens: dict[str, list[dict]] = field(default_factory=dict)  # variant -> token_activation_summary rows
    token_links: dict[tuple[str, str], list[dict]] = field(default_factory=dict)  # (direction, sign) -> rows
    neuron_links: dict[tuple[str, str], list[dict]] = field(default_factory=dict)  # (direction, sign) -> rows

    @property
    def key(self) -> str:
        return f"{self.layer}/{self.neuron}"

    def max_activation(self, variant: str) -> float | None:
        row = self.stats.get(variant)
        return None if row is None else row["max_activation"]

    @property
    def fix_impact(self) -> float | None:
        """post_fix − pre_fix maximum activation (None unless both lineages were recorded)."""
        pre, post = self.max_activation(PRE_FIX), self.max_activation(POST_FIX)
        return None if pre is None or post is None else post - pre

    @property
    def scale(self) -> float:
        """The largest activation over both lineages: one colour scale for pre- and post-fix."""
        return max([m for m in map(self.max_activation, GELU_VARIANTS) if m is not None] or [0.0]) or 1.0

    def score(self, explained_on: str, scored_on: str) -> Score | None:
        lines = [s for s in self.scores if (s.explanation_gelu_variant, s.gelu_variant) == (explained_on, scored_on)]
        return lines[0] if lines else None

    def explanation(self, variant: str) -> dict | None:
        rows = [e for e in self.explanations if e["gelu_variant"] == variant]
        return rows[0] if rows else None


def _filter(model: str, layer: int, neurons: list[int] | None, prefix: str = "") -> tuple[str, list]:
    where, params = f"{prefix}model = ? AND {prefix}layer = ?", [model, layer]
    if neurons is not None:
        where += f" AND {prefix}neuron IN ({', '.join('?' * len(neurons))})" if neurons else " AND FALSE"
        params += list(neurons)
    return where, params


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> list[dict]:
    return con.execute(sql, params).fetch_arrow_table().to_pylist()


def read_neurons(con: duckdb.DuckDBPyConnection, model: str, layer: int, neurons: list[int] | None = None,
                 top_records: int = 5, links: int = 5) -> list[NeuronView]:
    """Views of `neurons` of `layer` (None: every neuron with stats), ordered by neuron.

    `top_records` top records per variant and `links` connections per direction and sign are kept."""
    where, params = _filter(model, layer, neurons)
    views: dict[int, NeuronView] = {}
    for row in _rows(con, f"SELECT * FROM neuron_stats WHERE {where} ORDER BY neuron, gelu_variant", params):
        view = views.setdefault(row["neuron"], NeuronView(model, layer, row["neuron"]))
        view.stats[row["gelu_variant"]] = row
    for n in neurons or []:
        views.setdefault(n, NeuronView(model, layer, n))  # asked for: shown even if nothing was recorded

    rwhere, rparams = _filter(model, layer, neurons, "r.")
    for r in _rows(con, f"""
            SELECT r.gelu_variant, r.neuron, r.kind, r.rank, r.split, r.sequence_id, r.max_activation, r.activations,
                   s.tokens
            FROM activation_records r JOIN sequences s USING (model, corpus, sequence_id)
            WHERE {rwhere} AND r.kind = ? AND r.rank < ? ORDER BY r.neuron, r.gelu_variant, r.rank""",
                   rparams + [TOP, top_records]):
        if r["neuron"] in views:
            views[r["neuron"]].records.setdefault(r["gelu_variant"], []).append(Record(
                r["kind"], r["rank"], r["split"], r["sequence_id"], r["max_activation"], r["tokens"], r["activations"]))

    for e in _rows(con, f"SELECT * FROM explanations WHERE {where} ORDER BY neuron, gelu_variant, candidate", params):
        if e["neuron"] in views:
            views[e["neuron"]].explanations.append(e)

    sims: dict[tuple, list[Simulated]] = defaultdict(list)
    for s in _rows(con, f"""
            SELECT m.explanation_id, m.gelu_variant, m.simulator, m.neuron, m.sequence_id, m.kind, m.split,
                   m.true_activations, m.expected_activations, m.failure_reason, q.tokens
            FROM simulations m
            LEFT JOIN (SELECT DISTINCT ON (sequence_id) sequence_id, tokens FROM sequences WHERE model = ?) q
                 USING (sequence_id)
            WHERE {_filter(model, layer, neurons, 'm.')[0]} AND m.split = ? ORDER BY m.kind DESC, m.sequence_id""",
                   [model] + _filter(model, layer, neurons)[1] + [SCORED_SPLIT]):
        sims[(s["explanation_id"], s["gelu_variant"], s["simulator"])].append(Simulated(
            s["sequence_id"], s["kind"], s["split"], s["tokens"] or [], s["true_activations"] or [],
            s["expected_activations"], s["failure_reason"]))
    order = {line: i for i, line in enumerate(SCORE_LINES)}
    for s in _rows(con, f"SELECT * FROM scores WHERE {where} ORDER BY neuron, simulator", params):
        if s["neuron"] in views:
            fields = {k: s.get(k) for k in Score.__dataclass_fields__ if k != "simulations"}
            views[s["neuron"]].scores.append(Score(
                **fields, simulations=sims.get((s["explanation_id"], s["gelu_variant"], s["simulator"]), [])))
    for v in views.values():
        v.scores.sort(key=lambda s: order.get((s.explanation_gelu_variant, s.gelu_variant), len(order)))

    for t in _rows(con, f"SELECT * FROM token_activation_summary WHERE {where} AND rank < ? ORDER BY neuron, rank",
                   params + [links]):
        if t["neuron"] in views:
            views[t["neuron"]].top_tokens.setdefault(t["gelu_variant"], []).append(t)
    for t in _rows(con, f"SELECT * FROM token_connections WHERE {where} AND rank < ? ORDER BY neuron, rank",
                   params + [links]):
        if t["neuron"] in views:
            views[t["neuron"]].token_links.setdefault((t["direction"], t["sign"]), []).append(t)
    for c in _rows(con, f"SELECT * FROM neuron_connections WHERE {where} AND rank < ? ORDER BY neuron, rank",
                   params + [links]):
        if c["neuron"] in views:
            views[c["neuron"]].neuron_links.setdefault((c["direction"], c["sign"]), []).append(c)
    return [views[n] for n in sorted(views)]


def explanations_of(con: duckdb.DuckDBPyConnection, model: str, layers: set[int],
                    variant: str = POST_FIX) -> dict[tuple[int, int], str]:
    """(layer, neuron) -> its first explanation written from `variant`, for every neuron of `layers`
    (to label connected neurons)."""
    if not layers:
        return {}
    rows = con.execute(
        f"SELECT layer, neuron, explanation FROM explanations WHERE model = ? AND gelu_variant = ? "
        f"AND explanation IS NOT NULL AND layer IN ({', '.join('?' * len(layers))}) ORDER BY candidate DESC",
        [model, variant, *sorted(layers)]).fetchall()
    return {(layer, neuron): text for layer, neuron, text in rows}  # the lowest candidate wins
