"""The scorers in the data product: the main job writes classification_scores, intruder_scores and the
intervals and nulls of scores on both lineages and across them; every stored number is recomputed from the
stored rows (counts, excerpts, seeds, simulations); an LLM judge goes through the ledger (a rerun sends
nothing)."""

from __future__ import annotations

import numpy as np
import pytest

from nx_dagster.explain.classification import (
    auroc, balanced_accuracy_interval, confusion, correlation_interval, percentile_interval, resample_counts)
from nx_dagster.explain.classify import Judge, accuracy_interval
from nx_dagster.explain.excerpts import TRIAL_SIZE
from nx_dagster.storage import Catalog


@pytest.fixture(scope="module")
def cat(bundled_run):
    return Catalog(bundled_run / "nx_data")


def rows(cat: Catalog, sql: str, params=None) -> list[dict]:
    return cat.query(sql, params).to_pylist()


def test_main_job_writes_every_scorer_on_both_lineages_and_across(cat):
    got = {(r["explanation_gelu_variant"], r["gelu_variant"], r["scorer"]): r for r in rows(cat, """
        SELECT explanation_gelu_variant, gelu_variant, scorer, count(*) n, count(balanced_accuracy) scored,
               count(null_balanced_accuracy) n_nulls, any_value(judge) judge FROM classification_scores GROUP BY ALL""")}
    n = rows(cat, "SELECT count(*) n FROM explanations WHERE gelu_variant = 'post_fix'")[0]["n"]
    for lineage in (("pre_fix", "pre_fix"), ("post_fix", "post_fix"), ("pre_fix", "post_fix")):
        for scorer in ("detection", "fuzzing"):
            r = got[(*lineage, scorer)]
            assert r["n"] == n and r["judge"] == "token_lookup"
            assert r["scored"] > 0.5 * n and r["n_nulls"] == r["scored"]  # offline: a null for every neuron
    intruder = rows(cat, "SELECT gelu_variant, count(*) n, count(accuracy) scored FROM intruder_scores GROUP BY ALL")
    assert sorted(r["gelu_variant"] for r in intruder) == ["post_fix", "pre_fix"]
    assert all(r["n"] == n and r["scored"] > 0.5 * n for r in intruder)
    s = rows(cat, "SELECT count(*) n, count(ev_correlation) ev, count(ev_correlation_ci_low) ci, "
                  "count(null_explanation_id) n_nulls, count(e.explanation) explained "
                  "FROM scores JOIN explanations e USING (explanation_id)")[0]
    assert s["ci"] == s["ev"] > 0 and s["n_nulls"] == s["explained"] > 0.9 * s["n"]  # a null for each explanation
    # a failure is NULL with a reason, never a number
    assert rows(cat, "SELECT count(*) n FROM classification_scores WHERE (balanced_accuracy IS NULL) "
                     "= (failure_reason IS NULL)")[0]["n"] == 0
    assert rows(cat, "SELECT count(*) n FROM intruder_scores WHERE (accuracy IS NULL) = (failure_reason IS NULL)"
                )[0]["n"] == 0


def test_the_paper_table_explanations_beat_their_nulls(cat):
    """The per-layer table of the README: mean score, mean null and share above null per lineage and scorer."""
    table = rows(cat, """
        SELECT gelu_variant, layer, scorer, avg(balanced_accuracy) score, avg(null_balanced_accuracy) null_score,
               avg((balanced_accuracy_ci_low > null_balanced_accuracy)::INT) above
        FROM classification_scores WHERE explanation_gelu_variant = gelu_variant GROUP BY ALL""")
    detection = [r for r in table if r["scorer"] == "detection"]
    assert len(detection) == 2 * 4
    assert all(r["score"] > r["null_score"] + 0.1 and r["above"] > 0.3 for r in detection)
    assert all(0.4 <= r["null_score"] <= 0.6 for r in table)  # a null is near chance


def test_classification_numbers_recompute_from_the_stored_row(cat):
    for r in rows(cat, "SELECT * FROM classification_scores WHERE balanced_accuracy IS NOT NULL "
                       "ORDER BY explanation_id, scorer LIMIT 60"):
        truth = np.array(r["excerpt_truth"])
        said = np.array(r["excerpt_probability"]) >= 0.5
        c = confusion(truth, said)
        assert (c.true_positive, c.false_positive, c.true_negative, c.false_negative) == (
            r["true_positive"], r["false_positive"], r["true_negative"], r["false_negative"])
        assert (r["n_positive"], r["n_negative"]) == (c.n_positive, c.n_negative)
        assert r["balanced_accuracy"] == pytest.approx(c.balanced_accuracy)
        assert r["f1"] == (pytest.approx(c.f1) if c.f1 is not None else None)
        assert r["auroc"] is None  # the offline judge gives no probabilities
        # the interval from the four counts (canonical order: positives, then "yes" first) and the seed
        t = np.array([True] * c.n_positive + [False] * c.n_negative)
        a = np.array([True] * c.true_positive + [False] * c.false_negative + [True] * c.false_positive
                     + [False] * c.true_negative)
        assert balanced_accuracy_interval(t, a, r["bootstrap_seed"]) == pytest.approx(
            (r["balanced_accuracy_ci_low"], r["balanced_accuracy_ci_high"]))
        assert r["balanced_accuracy_ci_low"] <= r["balanced_accuracy"] <= r["balanced_accuracy_ci_high"]
        assert len(r["excerpt_sequence_ids"]) == len(truth)


def test_intruder_and_simulation_intervals_recompute(cat):
    for r in rows(cat, "SELECT * FROM intruder_scores WHERE accuracy IS NOT NULL LIMIT 40"):
        assert r["accuracy"] == r["n_correct"] / r["n_trials"] and r["chance"] == 1 / (TRIAL_SIZE + 1)
        assert accuracy_interval(r["n_trials"], r["n_correct"], r["bootstrap_seed"]) == pytest.approx(
            (r["accuracy_ci_low"], r["accuracy_ci_high"]))
    scored = rows(cat, "SELECT explanation_id, gelu_variant, ev_correlation, ev_correlation_ci_low lo, "
                       "ev_correlation_ci_high hi, bootstrap_seed FROM scores WHERE ev_correlation IS NOT NULL "
                       "ORDER BY explanation_id, gelu_variant LIMIT 25")
    for s in scored:
        sims = rows(cat, "SELECT true_activations t, expected_activations p FROM simulations WHERE explanation_id = ? "
                         "AND gelu_variant = ? AND split = 'valid' AND failure_reason IS NULL ORDER BY kind, "
                         "sequence_id", [s["explanation_id"], s["gelu_variant"]])
        lo, hi = correlation_interval([np.array(x["t"]) for x in sims], [np.array(x["p"]) for x in sims],
                                      s["bootstrap_seed"])
        assert (lo, hi) == pytest.approx((s["lo"], s["hi"]))
        assert lo <= s["ev_correlation"] + 1e-9 and s["ev_correlation"] <= hi + 1e-9


def test_the_bootstrap_is_a_percentile_interval_over_uniform_resamples():
    counts = resample_counts(7, seed=11, n_resamples=500)
    assert counts.shape == (500, 7) and (counts.sum(axis=1) == 7).all()
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))


def test_an_llm_judge_in_the_stage_goes_through_the_ledger(tmp_path):
    """A small catalog scored by the LLM judge of the local test server: rows, llm_calls, and a rerun that
    sends no request."""
    from nx_dagster.activations import RecorderSettings
    from nx_dagster.corpus import CorpusSpec
    from nx_dagster.explain.ledger import Ledger
    from nx_dagster.explain.llm import LLMClient, LLMSettings
    from nx_dagster.model import open_checkpoint
    from nx_dagster.stages.activations import write_activations, write_model, write_sequences
    from nx_dagster.stages.classify import write_classification_scores, write_intruder_scores
    from nx_dagster.stages.explain import write_explanations
    from nx_dagster.subject import Subject
    from tests.llm_server import FakeLLMServer

    cat = Catalog(str(tmp_path / "root"))
    s = Subject(open_checkpoint(None), CorpusSpec(None, 16, 200), "cpu")
    write_model(cat, s)
    write_sequences(cat, s)
    write_activations(cat, s, ["post_fix"], [0], RecorderSettings(8, 8, 2, 0, 32))
    write_explanations(cat, s.name, s.corpus.name, "post_fix", [0], range(0, 6), "token_lookup", None)
    with FakeLLMServer() as server:
        def judge() -> Judge:
            client = LLMClient(LLMSettings(api_key="k", base_url=server.base_url, concurrency=4),
                               Ledger(tmp_path / "ledger.sqlite"))
            return Judge("json_logprobs", client, "judge-model")

        out = write_classification_scores(cat, s.name, s.corpus.name, "post_fix", "post_fix", [0], range(0, 6),
                                          "token_lookup", judge(), null_fraction=0.5)
        write_intruder_scores(cat, s.name, s.corpus.name, "post_fix", [0], range(0, 6), judge())
        sent = server.count()
        assert sent > 0 and out["llm"]["calls"] > 0
        table = rows(cat, "SELECT * FROM classification_scores ORDER BY explanation_id, scorer")
        assert {r["judge_model"] for r in table} == {"judge-model"}
        scored = [r for r in table if r["balanced_accuracy"] is not None]
        assert scored and all(r["auroc"] is not None for r in scored)  # probabilities from top_logprobs
        for r in scored:  # AUROC recomputed from the stored excerpts' truth and probabilities
            assert r["auroc"] == pytest.approx(auroc(np.array(r["excerpt_truth"]), np.array(r["excerpt_probability"])))
        assert rows(cat, "SELECT count(*) n FROM llm_calls")[0]["n"] == sent
        write_classification_scores(cat, s.name, s.corpus.name, "post_fix", "post_fix", [0], range(0, 6),
                                    "token_lookup", judge(), null_fraction=0.5)
        write_intruder_scores(cat, s.name, s.corpus.name, "post_fix", [0], range(0, 6), judge())
        assert server.count() == sent  # answered from the ledger
        assert rows(cat, "SELECT * FROM classification_scores ORDER BY explanation_id, scorer") == table
