"""Excerpts for the classification and intruder scorers, the offline judges and the LLM judges' replies."""

import json
import math

import numpy as np

from nx_dagster.explain import classify
from nx_dagster.explain import excerpts as ex
from nx_dagster.explain.classification import confusion
from nx_dagster.explain.judges import (
    DETECTION, FUZZING, judge_messages, offline_detection, offline_fuzzing, offline_intruder, parse_answers,
    parse_intruder)
from nx_dagster.explain.naming import token_matcher
from nx_dagster.explain.records import ActivationRecord, Explanation, NeuronRecords

WORDS = [" a", " b", " c", " d", " e", " f", " g", " h"]


def neuron(fires_on: str, n: int = 2, seed: int = 0) -> NeuronRecords:
    """Records of a neuron that is 5 on `fires_on` and 0 elsewhere: top (every split) and quantile records
    hold the token, random records do not."""
    records = []
    for i in range(24):
        tokens = [WORDS[(i + j + seed) % len(WORDS)] for j in range(6)]
        if i < 16:
            tokens[i % 6] = fires_on
        acts = [5.0 if t == fires_on else 0.0 for t in tokens]
        kind = "top" if i < 8 else "quantile" if i < 16 else "random"
        split = ("train", "calibration", "valid", "test")[i % 4] if kind == "top" else \
            None if kind == "quantile" else ("calibration", "valid", "test")[i % 3]
        records.append(ActivationRecord(1000 * n + i, tokens, acts, kind, split, rank=i % 8))
    return NeuronRecords("m", "post_fix", 0, n, records)


def test_token_matcher_reads_quotes_exactly_and_prose_case_blind():
    quoted = token_matcher('fires on tokens: " The", "("')
    assert quoted(" The") and quoted("(")
    assert not quoted("The") and not quoted(" the") and not quoted("the")
    prose = token_matcher("the word Paris")
    assert prose(" paris") and prose("Paris") and not prose(" the")


def test_detection_excerpts_hold_out_train_and_split_by_threshold():
    n = neuron(" The")
    e = ex.detection_excerpts(n, seed=3)
    train = {r.sequence_id for r in n.records if r.split == "train"}
    assert not train & {x.sequence_id for x in e}
    assert sum(x.truth for x in e) == 10 and sum(not x.truth for x in e) == 8  # 12 activating, 8 random
    assert all(max(x.activations) >= 1.25 for x in e if x.truth)
    assert all(max(x.activations) < 1.25 for x in e if not x.truth)
    assert e == ex.detection_excerpts(n, seed=3) and e != ex.detection_excerpts(n, seed=4)
    said = offline_detection('fires on tokens: " The"', e)
    assert said == [1.0 if x.truth else 0.0 for x in e]
    assert offline_detection('fires on tokens: "The"', e) == [0.0] * len(e)  # exact reading


def test_fuzzing_shifts_half_the_highlights_and_the_offline_judge_sees_it():
    e = ex.fuzzing_excerpts(neuron(" The"), seed=1)
    assert len(e) == 10 and sum(not x.truth for x in e) == 5
    for x in e:
        marked = [x.tokens[i] for i in x.highlight]
        assert marked and (all(t == " The" for t in marked) if x.truth else " The" not in marked)
    assert offline_fuzzing('fires on tokens: " The"', e) == [1.0 if x.truth else 0.0 for x in e]


def test_intruder_trials_and_offline_judge():
    own, other = neuron(" The", n=1), neuron(" import", n=2, seed=3)
    pool = ex.activating([own, other])
    trials = ex.intruder_trials(pool[0], pool, seed=0)
    assert len(trials) == 3  # 12 activating excerpts of its own, 4 per trial
    for t in trials:
        assert len(t.excerpts) == 5 and not t.excerpts[t.intruder].truth
        assert offline_intruder(t) == t.intruder
    assert ex.intruder_trials(pool[0], pool[:1], seed=0) == []  # no other neuron: no trial


def test_a_silent_neuron_gets_no_excerpts():
    silent = NeuronRecords("m", "post_fix", 0, 9, [ActivationRecord(1, [" a"], [0.0], "top", "valid")])
    assert ex.detection_excerpts(silent, 0) == [] and ex.fuzzing_excerpts(silent, 0) == []


def _choice(content: str, tops: list[list[tuple[str, float]]] | None = None) -> dict:
    choice = {"message": {"content": content}, "finish_reason": "stop"}
    if tops is not None:  # one logprob entry per character of the reply
        choice["logprobs"] = {"content": [
            {"token": ch, "logprob": 0.0, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alts]
             if ch in "01" else []} for ch, alts in zip(content, tops)]}
    return choice


def test_parse_answers_probabilities_and_failures():
    text = json.dumps({"answers": [1, 0]})
    tops = [[] for _ in text]
    tops[text.index("1")] = [("1", math.log(0.6)), ("0", math.log(0.2)), ("x", math.log(0.2))]
    tops[text.index("0", text.index("1"))] = [("0", math.log(0.9)), ("1", math.log(0.1))]
    values, why = parse_answers(_choice(text, tops), 2, True)
    assert why is None and abs(values[0] - 0.75) < 1e-12 and abs(values[1] - 0.1) < 1e-12
    assert parse_answers(_choice(text), 2, False) == ([1.0, 0.0], None)
    assert "2 answers for 3" in parse_answers(_choice(text), 3, False)[1]
    assert "other than 0 and 1" in parse_answers(_choice('{"answers": [2, 0]}'), 2, False)[1]
    assert "other than 0 and 1 (True)" in parse_answers(_choice('{"answers": [true, 0]}'), 2, False)[1]
    assert "do not spell" in parse_answers(_choice(text), 2, True)[1]
    assert parse_intruder(_choice('{"intruder": 3}'), 5) == (2, None)
    assert parse_intruder(_choice('{"intruder": 6}'), 5)[0] is None


def test_prompts_mark_tokens_only_for_fuzzing():
    e = ex.fuzzing_excerpts(neuron(" The"), seed=1)
    assert "<<" in judge_messages(FUZZING, "x", e)[1]["content"]
    assert "<<" not in judge_messages(DETECTION, "x", e)[1]["content"]


def _explained(records: NeuronRecords, text: str | None) -> Explanation:
    return Explanation(records.model, records.gelu_variant, records.layer, records.neuron, "token_lookup", None,
                       "v", 0, text, None if text else "failed", explanation_id=f"e{records.neuron}")


def test_offline_classification_rows_with_intervals_and_nulls():
    tokens = [" The", " import", "(", " None"]
    neurons = [neuron(t, n=i, seed=i) for i, t in enumerate(tokens)]
    pairs = [(_explained(n, f'fires on tokens: "{t}"'), n) for n, t in zip(neurons, tokens)]
    pairs.append((_explained(neuron(" x", n=9), None), neuron(" x", n=9)))
    for scorer in (DETECTION, FUZZING):
        rows = classify.classification_rows(scorer, pairs, classify.Judge("token_lookup"))
        assert [r["failure_reason"] for r in rows[:4]] == [None] * 4 and "no explanation" in rows[4]["failure_reason"]
        for r in rows[:4]:
            assert r["balanced_accuracy"] == 1.0 and r["f1"] == 1.0 and r["auroc"] is None
            assert r["balanced_accuracy_ci_low"] == r["balanced_accuracy_ci_high"] == 1.0
            assert r["null_explanation_id"] not in (None, r["explanation_id"])
            assert r["null_balanced_accuracy"] <= 0.5  # another neuron's token never occurs here
            truth, said = np.array(r["excerpt_truth"]), np.array(r["excerpt_probability"]) >= 0.5
            c = confusion(truth, said)
            assert (c.true_positive, c.false_negative, c.true_negative, c.false_positive) == \
                (r["true_positive"], r["false_negative"], r["true_negative"], r["false_positive"])
        assert rows == classify.classification_rows(scorer, pairs, classify.Judge("token_lookup"))  # seeded
    none = classify.classification_rows(DETECTION, pairs, classify.Judge("token_lookup"), null_fraction=0.0)
    assert all(r.get("null_explanation_id") is None for r in none)


def test_offline_intruder_rows():
    neurons = [neuron(t, n=i, seed=i) for i, t in enumerate([" The", " import", "(", " None"])]
    rows = classify.intruder_rows(neurons, classify.Judge("token_lookup"))
    for r in rows:
        assert r["failure_reason"] is None
        assert r["n_trials"] == 3 and r["n_correct"] == 3 and r["accuracy"] == 1.0 and r["chance"] == 0.2
        assert (r["accuracy_ci_low"], r["accuracy_ci_high"]) == (1.0, 1.0)
    assert classify.accuracy_interval(10, 5, seed=1)[0] < 0.5 < classify.accuracy_interval(10, 5, seed=1)[1]
