"""What a score is compared with: its bootstrap interval and its null.

- Null: for a seeded share of the explanations, another neuron's explanation (same model, layer, lineage
  and explainer, chosen with a seeded generator) is scored on this neuron's records by the same method. A
  score that does not beat its null says nothing about the neuron. `null_partners` chooses; the partner is
  given to the scorer as an explanation of this neuron (`as_null`): same text, this neuron's place.
- Interval of `ev_correlation`: a 95 % percentile bootstrap over the scored sequences (the valid top and
  random records that were simulated), resampled in a canonical order (kind, then sequence id) with the
  row's `bootstrap_seed`, so it can be recomputed from the `simulations` table.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nx_dagster.explain.classification import correlation_interval
from nx_dagster.explain.excerpts import seed_of_text
from nx_dagster.explain.records import Explanation
from nx_dagster.vocab import SCORED_SPLIT, SIMULATED_KINDS, TOKEN_LOOKUP

NULL_FRACTION_OFFLINE = 1.0  # offline methods are free: every neuron gets a null
NULL_FRACTION_LLM = 0.1  # an LLM pays for each null: one neuron in ten by default


def default_null_fraction(method: str) -> float:
    return NULL_FRACTION_OFFLINE if method == TOKEN_LOOKUP else NULL_FRACTION_LLM


def null_partners(explanations: Sequence[Explanation], fraction: float, seed: int, scorer: str
                  ) -> dict[str, Explanation]:
    """explanation_id -> the other neuron's explanation its null uses, for the chosen share."""
    groups: dict[tuple, list[Explanation]] = {}
    for e in explanations:
        if e.explanation is not None:
            groups.setdefault((e.model, e.layer, e.gelu_variant, e.explainer), []).append(e)
    out = {}
    for e in explanations:
        key = f"{e.explanation_id}|{scorer}|{seed}"
        group = groups.get((e.model, e.layer, e.gelu_variant, e.explainer), [])
        if e.explanation is None or not (fraction >= 1 or (
                fraction > 0 and seed_of_text(key + "|null") / 2 ** 63 < fraction)):
            continue
        if any(o.neuron != e.neuron for o in group):  # draw until another neuron's (a neuron may have several)
            rng = np.random.default_rng(seed_of_text(key))
            while (other := group[int(rng.integers(len(group)))]).neuron == e.neuron:
                pass
            out[e.explanation_id] = other
    return out


def as_null(partner: Explanation, of: Explanation) -> Explanation:
    """`partner`'s text as an explanation of `of`'s neuron, under `of`'s id (so its simulations and score
    group with `of`; the partner's own id is stored beside the score)."""
    return dataclasses.replace(partner, model=of.model, layer=of.layer, neuron=of.neuron,
                               explanation_id=of.explanation_id)


def bootstrap_seed(explanation_id: str, gelu_variant: str, method: str, seed: int) -> int:
    return seed_of_text(f"{explanation_id}|{gelu_variant}|{method}|{seed}")


def ev_correlation_intervals(simulations: pa.Table, seed: int) -> dict[tuple[str, str], tuple]:
    """(explanation_id, gelu_variant) -> (ci_low, ci_high, bootstrap_seed) over the valid top and random
    simulations without failure."""
    keep = pc.and_(pc.and_(pc.equal(simulations["split"], SCORED_SPLIT),
                           pc.is_in(simulations["kind"], pa.array(SIMULATED_KINDS))),
                   pc.and_(pc.is_null(simulations["failure_reason"]), pc.is_valid(simulations["expected_activations"])))
    t = simulations.filter(keep).select(["explanation_id", "gelu_variant", "simulator", "kind", "sequence_id",
                                         "true_activations", "expected_activations"])
    t = t.sort_by([("explanation_id", "ascending"), ("gelu_variant", "ascending"), ("kind", "ascending"),
                   ("sequence_id", "ascending")])
    ids, variants = t["explanation_id"].to_pylist(), t["gelu_variant"].to_pylist()
    simulator = t["simulator"].to_pylist()
    true = t["true_activations"].to_pylist()
    expected = t["expected_activations"].to_pylist()
    out, start = {}, 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (ids[i], variants[i]) != (ids[start], variants[start]):
            row_seed = bootstrap_seed(ids[start], variants[start], simulator[start], seed)
            low, high = correlation_interval([np.asarray(x, np.float64) for x in true[start:i]],
                                             [np.asarray(x, np.float64) for x in expected[start:i]], row_seed)
            out[(ids[start], variants[start])] = (low, high, row_seed)
            start = i
    return out
