"""Scores recomputed by hand from the definitions (PRODUCT.md §4), and the batch scorer held to them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pytest

from nx_dagster.explain import ScoredSequence, score_sequences, score_simulations
from nx_dagster.storage.schema import TABLES, rows_to_table


def seq(kind, split, true, expected, failure=None) -> ScoredSequence:
    return ScoredSequence(kind, split, true, expected, failure)


def hand_pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


TOP = [seq("top", "valid", [0.0, 2.0, 4.0], [0.0, 5.0, 10.0]), seq("top", "valid", [1.0, 0.0], [2.0, 1.0])]
RANDOM = [seq("random", "valid", [0.0, 0.5, -0.1], [1.0, 0.0, 0.0])]
CAL = [seq("top", "calibration", [0.0, 3.0], [0.0, 10.0]), seq("random", "calibration", [1.0], [0.0])]
OTHER = [seq("top", "train", [9.0, 9.0], [0.0, 10.0]), seq("top", "test", [1.0, 2.0], [3.0, 3.0])]


def test_scores_match_the_definitions_by_hand():
    t = [0.0, 2.0, 4.0, 1.0, 0.0, 0.0, 0.5, -0.1]
    s = [0.0, 5.0, 10.0, 2.0, 1.0, 1.0, 0.0, 0.0]
    # least squares of true on simulated over the calibration split: points (0,0), (10,3), (0,1)
    cs, ct = [0.0, 10.0, 0.0], [0.0, 3.0, 1.0]
    ms, mt = sum(cs) / 3, sum(ct) / 3
    a = sum((x - ms) * (y - mt) for x, y in zip(cs, ct)) / sum((x - ms) ** 2 for x in cs)
    b = mt - a * ms
    p = [a * x + b for x in s]
    score = score_sequences(TOP + RANDOM + CAL + OTHER)
    assert score.ev_correlation == pytest.approx(hand_pearson(t, s), abs=1e-12)  # pooled, not per sequence
    assert score.ev_correlation_top == pytest.approx(hand_pearson(t[:5], s[:5]), abs=1e-12)
    assert score.ev_correlation_random == pytest.approx(hand_pearson(t[5:], s[5:]), abs=1e-12)
    r2 = 1 - sum((x - y) ** 2 for x, y in zip(t, p)) / len(t) / (sum(x * x for x in t) / len(t))
    ade = 1 - sum(abs(x - y) for x, y in zip(t, p)) / len(t) / (sum(abs(x) for x in t) / len(t))
    assert score.rsquared == pytest.approx(r2, abs=1e-12) and score.calibrated_rsquared is None  # deprecated
    assert score.absolute_dev_explained == pytest.approx(ade, abs=1e-12)
    assert score.n_tokens == 8 and score.failure_reason is None
    assert (score.n_sequences, score.n_failed_sequences) == (5, 0)
    per_sequence = np.mean([hand_pearson(q.true, q.expected) for q in TOP])
    assert abs(per_sequence - score.ev_correlation_top) > 1e-3  # pooling is not averaging


def test_without_calibration_p_is_the_raw_simulation():
    t = [0.0, 2.0, 4.0, 1.0, 0.0, 0.0, 0.5, -0.1]
    s = [0.0, 5.0, 10.0, 2.0, 1.0, 1.0, 0.0, 0.0]
    for score in (score_sequences(TOP + RANDOM), score_sequences(TOP + RANDOM + CAL, calibrate=False)):
        assert score.rsquared == pytest.approx(1 - np.mean((np.array(t) - s) ** 2) / np.mean(np.square(t)))
        assert score.absolute_dev_explained == pytest.approx(1 - np.mean(np.abs(np.array(t) - s)) / np.mean(np.abs(t)))
        assert score.calibrated_rsquared is None


def test_undefined_metrics_are_null_with_a_reason():
    flat_random = [seq("random", "valid", [0.0, 0.0], [1.0, 2.0])]
    score = score_sequences(TOP + flat_random)
    assert score.ev_correlation is not None and score.ev_correlation_random is None
    assert "ev_correlation_random: undefined (true activations are constant)" in score.failure_reason
    constant_sim = [seq("top", "valid", [0.0, 1.0], [3.0, 3.0])]
    score = score_sequences(constant_sim)
    assert score.ev_correlation is None and "simulated activations are constant" in score.failure_reason
    assert score.ev_correlation_random is None and "no tokens" in score.failure_reason
    dead = score_sequences([seq("top", "valid", [0.0, 0.0], [0.0, 1.0])])
    assert dead.rsquared is None and dead.absolute_dev_explained is None
    assert "rsquared, absolute_dev_explained: undefined (true activations are constant)" in dead.failure_reason
    failed = score_sequences(TOP + [seq("random", "valid", [1.0], None, "refused: no")])
    assert failed.ev_correlation is None and failed.rsquared is None
    assert failed.failure_reason == "simulation failed for 1 of 3 sequences: refused: no"
    assert (failed.n_sequences, failed.n_failed_sequences) == (3, 1)


# A neuron constant on every token (here 2.0; the example), simulated as a constant: the
# calibration maps the simulation onto the constant exactly, which used to score rsquared = 1.0.
CONSTANT = [seq("top", "valid", [2.0, 2.0, 2.0], [5.0, 5.0, 5.0]), seq("random", "valid", [2.0], [5.0]),
            seq("top", "calibration", [2.0, 2.0], [5.0, 5.0])]


@pytest.mark.parametrize("level", [2.0, 0.0, -0.17])
def test_constant_truth_has_no_rsquared_in_both_scorers(level):
    seqs = [seq(q.kind, q.split, [level] * len(q.true), q.expected) for q in CONSTANT]
    seqs[0] = seq("top", "valid", [level] * 3, [5.0, 9.0, 5.0])  # even a simulation that varies
    for sequences in (CONSTANT if level == 2.0 else seqs, seqs):
        score = score_sequences(sequences)
        (row,) = score_simulations(_table({"e": list(sequences)})).to_pylist()
        for got in (score.__dict__, row):
            assert got["rsquared"] is None and got["absolute_dev_explained"] is None
            assert got["ev_correlation"] is None and got["calibrated_rsquared"] is None
            assert "rsquared, absolute_dev_explained: undefined (true activations are constant)" in got["failure_reason"]
        assert row["failure_reason"] == score.failure_reason


def _kinds(n_top: int, n_random: int, n_cal: int, failed: dict[str, int]) -> list[ScoredSequence]:
    rng = np.random.default_rng(n_top * 100 + n_random * 10 + n_cal)
    out = []
    for kind, split, n in (("top", "valid", n_top), ("random", "valid", n_random), ("top", "calibration", n_cal)):
        for i in range(n):
            t = rng.gamma(0.5, 2.0, 6).round(3).tolist()
            bad = i < failed.get(f"{split}-{kind}", 0)
            out.append(seq(kind, split, t, None if bad else [min(10.0, 2 * x + 0.3 * i) for x in t],
                           "unusable reply (3 asks): refused: no" if bad else None))
    return out


@pytest.mark.parametrize("shape, failed, scored", [
    ((5, 5, 5), {"valid-top": 1}, True),                      # 4 of 5 = 80 %: scored on the 14 that succeeded
    ((5, 5, 5), {"valid-top": 1, "calibration-top": 1}, True),
    ((5, 5, 5), {"valid-top": 2}, False),                     # 3 of 5 < 80 %
    ((4, 5, 5), {"valid-top": 1}, False),                     # 3 of 4 < 80 %
    ((5, 10, 5), {"valid-random": 2}, True),
    ((5, 5, 4), {"calibration-top": 1}, False),
])
def test_failed_sequences_score_the_rest_only_when_each_group_keeps_80_percent(shape, failed, scored):
    seqs = _kinds(*shape, failed)
    score = score_sequences(seqs)
    (row,) = score_simulations(_table({"e": seqs})).to_pylist()
    n_failed = sum(failed.values())
    assert (score.n_sequences, score.n_failed_sequences) == (sum(shape), n_failed)
    assert (row["n_sequences"], row["n_failed_sequences"]) == (sum(shape), n_failed)
    survivors = score_sequences([q for q in seqs if q.expected is not None])
    if scored:
        assert score.ev_correlation == pytest.approx(survivors.ev_correlation, abs=1e-12)
        assert score.rsquared == pytest.approx(survivors.rsquared, abs=1e-12)
        assert row["rsquared"] == pytest.approx(score.rsquared, rel=1e-6)  # float32 storage
        assert score.n_tokens == row["n_tokens"] == survivors.n_tokens and score.failure_reason is None
    else:
        assert score.ev_correlation is None and row["ev_correlation"] is None and row["rsquared"] is None
        assert score.failure_reason == row["failure_reason"] == \
            f"simulation failed for {n_failed} of {sum(shape)} sequences: unusable reply (3 asks): refused: no"


def _table(groups: dict[str, list[ScoredSequence]]) -> pa.Table:
    rows = []
    for i, (eid, seqs) in enumerate(groups.items()):
        for j, q in enumerate(seqs):
            rows.append(dict(explanation_id=eid, model="m", layer=0, neuron=i, gelu_variant="post_fix",
                             simulator="json_logprobs", simulator_model="x", sequence_id=j, kind=q.kind,
                             split=q.split, expected_activations=q.expected, true_activations=list(q.true),
                             failure_reason=q.failure_reason))
    return rows_to_table("simulations", rows)


def _random_groups(rng: np.random.Generator, n: int) -> dict[str, list[ScoredSequence]]:
    groups = {}
    for g in range(n):
        seqs = []
        for kind, split in [("top", "valid")] * 2 + [("random", "valid")] * 2 + [("top", "calibration"),
                                                                                ("random", "calibration")]:
            length = int(rng.integers(0 if g % 11 == 0 else 1, 9))
            t = rng.gamma(0.5, 2.0, length).astype(np.float32)
            s = np.clip(t * 2 + rng.normal(0, 1, length), 0, 10).astype(np.float32)
            if g % 5 == 0 and kind == "random":
                t[:] = 0.0
            seqs.append(seq(kind, split, t.tolist(), s.tolist()))
        if g % 7 == 0:
            seqs = [q for q in seqs if q.split != "calibration"]
        if g % 13 == 0:
            seqs[1] = seq(seqs[1].kind, seqs[1].split, seqs[1].true, None, "malformed structured output")
        if g % 17 == 0:
            seqs += [seq("top", "train", [1.0], [5.0]), seq("quantile", "valid", [3.0], [1.0])]
        groups[f"e{g}"] = seqs
    return groups


@pytest.mark.parametrize("calibrate", [True, False])
def test_batch_scoring_equals_the_definitions(calibrate):
    groups = _random_groups(np.random.default_rng(0), 300)
    table = _table(groups)
    scores = score_simulations(table, {k: "pre_fix" for k in groups}, calibrate=calibrate, batch_rows=97)
    assert scores.schema == TABLES["scores"] and scores.num_rows == len(groups)
    assert set(scores.column("explanation_gelu_variant").to_pylist()) == {"pre_fix"}
    for row, (eid, seqs) in zip(scores.to_pylist(), groups.items()):
        want = score_sequences(seqs, calibrate=calibrate)
        assert row["explanation_id"] == eid and row["n_tokens"] == want.n_tokens
        assert row["failure_reason"] == want.failure_reason
        assert (row["n_sequences"], row["n_failed_sequences"]) == (want.n_sequences, want.n_failed_sequences)
        for k in ("ev_correlation", "ev_correlation_top", "ev_correlation_random", "rsquared",
                  "absolute_dev_explained", "calibrated_rsquared"):
            got, expected = row[k], getattr(want, k)
            assert (got is None) == (expected is None), (eid, k, got, expected)
            if got is not None:
                assert got == pytest.approx(expected, rel=1e-9, abs=1e-9), (eid, k)


def test_scores_recomputed_from_stored_simulations_in_sql(tmp_path):
    import duckdb

    groups = _random_groups(np.random.default_rng(1), 20)
    table = _table(groups)
    scores = score_simulations(table, calibrate=False)
    con = duckdb.connect()
    con.register("simulations", table)
    sql = """SELECT explanation_id, corr(t, s) AS r, 1 - avg((t - s) ^ 2) / avg(t ^ 2) AS r2 FROM (
               SELECT explanation_id, unnest(true_activations) AS t, unnest(expected_activations) AS s
               FROM simulations WHERE split = 'valid' AND kind IN ('top', 'random')) GROUP BY 1"""
    by_sql = {r[0]: r[1:] for r in con.execute(sql).fetchall()}
    for row in scores.to_pylist():
        if row["ev_correlation"] is not None:
            assert row["ev_correlation"] == pytest.approx(by_sql[row["explanation_id"]][0], rel=1e-5)
            assert row["rsquared"] == pytest.approx(by_sql[row["explanation_id"]][1], rel=1e-5)


def test_empty_simulations_give_empty_scores():
    assert score_simulations(rows_to_table("simulations", [])).num_rows == 0


def test_explanations_without_records_get_a_null_score_with_a_reason():
    from nx_dagster.explain import explain_neurons, pair_by_neuron, simulate, simulations_table
    from nx_dagster.explain.batch_scoring import unscored_rows
    from tests.llm_server import demo_neurons

    neurons = demo_neurons(3)
    expls = explain_neurons(neurons)
    only_train = dataclasses.replace(neurons[2], records=[r for r in neurons[2].records if r.split == "train"])
    records = [neurons[0], only_train]  # neuron 1 has no records of the scored variant at all
    scores = score_simulations(simulations_table(simulate(pair_by_neuron(expls, records))))
    scores = pa.concat_tables([scores, unscored_rows(expls, scores, "post_fix", "token_lookup", None)])
    rows = {r["neuron"]: r for r in scores.to_pylist()}
    assert sorted(rows) == [0, 1, 2] and rows[0]["ev_correlation"] is not None
    for n in (1, 2):
        assert rows[n]["ev_correlation"] is None and rows[n]["rsquared"] is None
        assert "no valid or calibration records" in rows[n]["failure_reason"]
        assert rows[n]["explanation_id"] == expls[n].explanation_id and rows[n]["n_sequences"] == 0
