"""Detection, fuzzing and intruder scores: excerpts → a judge → rows with intervals and nulls.

Judges (`judge` column): `token_lookup` (offline, `judges.offline_*`), `json_logprobs` (a chat model's JSON
answers, probabilities from top_logprobs, so AUROC too) and `logprob_free` (the written answers; AUROC NULL).
The offline judge's answers are 0 or 1, so its AUROC is left NULL as well: AUROC is stored only where the
judge gives probabilities.

Every classification row also holds:
- a 95 % bootstrap interval of the balanced accuracy, resampling the judged excerpts with the row's
  `bootstrap_seed`; the excerpts are resampled in a canonical order (by truth, then answer), so the interval
  is a function of the four counts and the seed and can be recomputed from the row;
- a null (`baselines.null_partners`): the same judge on the same excerpts with the explanation of another
  neuron of the same layer and lineage, for a `null_fraction` of the neurons (every neuron offline, one in
  ten with an LLM by default): `null_explanation_id`, `null_balanced_accuracy`;
- the judged excerpts (`excerpt_sequence_ids`, `excerpt_truth`, `excerpt_probability`), from which
  every number of the row can be recomputed.
Intruder rows (per neuron, no explanation) hold the trials' count, the correct ones, the accuracy, its
bootstrap interval (over the trials, canonical order: correct first) and `chance` = 1 / excerpts per trial.
A failure is a NULL score with a `failure_reason`, never a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from nx_dagster.explain import excerpts as ex
from nx_dagster.explain import judges
from nx_dagster.explain.baselines import default_null_fraction, null_partners
from nx_dagster.explain.classification import (
    auroc, balanced_accuracy_interval, confusion, percentile_interval, resample_counts)
from nx_dagster.explain.llm import LLMClient, LLMRequest
from nx_dagster.explain.records import Explanation, NeuronRecords
from nx_dagster.vocab import JSON_LOGPROBS, TOKEN_LOOKUP

_METRICS = ("n_positive", "n_negative", "true_positive", "false_positive", "true_negative", "false_negative",
            "balanced_accuracy", "balanced_accuracy_ci_low", "balanced_accuracy_ci_high", "f1", "auroc",
            "excerpt_probability", "null_explanation_id", "null_balanced_accuracy")  # NULL until computed


@dataclass(frozen=True)
class Judge:
    name: str  # one of vocab.JUDGES
    client: LLMClient | None = None  # for the LLM judges
    model: str | None = None
    top_logprobs: int = 20

    @property
    def offline(self) -> bool:
        return self.name == TOKEN_LOOKUP


def _why_not(excerpts: list[ex.Excerpt]) -> str | None:
    """Why these excerpts cannot give a balanced accuracy (one class is empty), or None."""
    if not any(x.truth for x in excerpts):
        return "no activating record to judge (the neuron never fires)"
    if all(x.truth for x in excerpts):
        return (f"no non-activating excerpt: every record reaches {ex.ACTIVE_FRACTION:g} of the neuron's top "
                "activation (a neuron that fires everywhere)")
    return None


def _canonical(truth: np.ndarray, said: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((~said, ~truth))  # positives first, and within each class "yes" first
    return truth[order], said[order]


def accuracy_interval(n_trials: int, n_correct: int, seed: int) -> tuple[float | None, float | None]:
    """Bootstrap interval of an accuracy over trials (correct ones first)."""
    if not n_trials:
        return None, None
    correct = np.arange(n_trials) < n_correct
    return percentile_interval(resample_counts(n_trials, seed) @ correct / n_trials)


def _ask(judge: Judge, questions: list[tuple[str, list[ex.Excerpt]]], scorer: str
         ) -> list[tuple[list | None, str | None]]:
    """Per (explanation, excerpts): the judge's probabilities of "yes", or a failure reason."""
    if judge.offline:
        answer = judges.offline_detection if scorer == judges.DETECTION else judges.offline_fuzzing
        return [(answer(text, excerpts), None) for text, excerpts in questions]
    with_logprobs = judge.name == JSON_LOGPROBS
    requests = [LLMRequest("chat", judge.model, judges.judge_params(
        judges.judge_messages(scorer, text, excerpts), judges.ANSWERS_SCHEMA, len(excerpts),
        judge.top_logprobs if with_logprobs else None)) for text, excerpts in questions]

    def parse(i: int, result) -> tuple[Any, str | None]:
        choices = (result.response or {}).get("choices") or []
        if not choices:
            return None, "the reply has no choices"
        return judges.parse_answers(choices[0], len(questions[i][1]), with_logprobs)

    out = []
    for result, values, failure in judge.client.map_usable(requests, parse):
        if failure is not None and result.status != "unusable":
            failure = f"LLM call failed ({result.status}): {failure}"
        out.append((values, failure))
    return out


def classification_rows(scorer: str, pairs: Sequence[tuple[Explanation, NeuronRecords]], judge: Judge,
                        null_fraction: float | None = None, seed: int = 0) -> list[dict]:
    """One row per (explanation, records) pair; `pairs` from one layer and lineage each for the nulls."""
    draw = ex.detection_excerpts if scorer == judges.DETECTION else ex.fuzzing_excerpts
    fraction = null_fraction if null_fraction is not None else default_null_fraction(judge.name)
    partners = null_partners([e for e, _ in pairs], fraction, seed, scorer)
    plans, questions = [], []
    for e, records in pairs:
        row_seed = ex.seed_of(records, scorer, seed)
        excerpts = draw(records, row_seed)
        null = partners.get(e.explanation_id)
        ask = e.explanation is not None and _why_not(excerpts) is None
        plans.append((e, records, row_seed, excerpts, null, len(questions) if ask else None))
        if ask:
            questions.append((e.explanation, excerpts))
            if null is not None:
                questions.append((null.explanation, excerpts))
    answers = _ask(judge, questions, scorer) if questions else []
    rows = []
    for e, records, row_seed, excerpts, null, at in plans:
        row = {"explanation_id": e.explanation_id, "model": records.model, "layer": records.layer,
               "neuron": records.neuron, "explanation_gelu_variant": e.gelu_variant,
               "gelu_variant": records.gelu_variant, "explainer": e.explainer, "scorer": scorer,
               "judge": judge.name, "judge_model": judge.model, "bootstrap_seed": row_seed,
               "excerpt_sequence_ids": [x.sequence_id for x in excerpts],
               "excerpt_truth": [x.truth for x in excerpts], **dict.fromkeys(_METRICS)}
        if e.explanation is None:
            row["failure_reason"] = f"no explanation to score ({e.failure_reason})"
        elif _why_not(excerpts):
            row["failure_reason"] = _why_not(excerpts)
        else:
            values, failure = answers[at]
            row["failure_reason"] = failure
            if failure is None:
                row.update(_classification(excerpts, values, row_seed, judge.name == JSON_LOGPROBS))
            if null is not None:
                null_values, null_failure = answers[at + 1]
                row["null_explanation_id"] = null.explanation_id
                if null_failure is None:
                    truth = np.array([x.truth for x in excerpts])
                    row["null_balanced_accuracy"] = confusion(truth, np.array(null_values) >= 0.5).balanced_accuracy
        rows.append(row)
    return rows


def _classification(excerpts: list[ex.Excerpt], probability: list[float], seed: int, probabilities: bool) -> dict:
    truth = np.array([x.truth for x in excerpts])
    said = np.array(probability) >= 0.5
    c = confusion(truth, said)
    low, high = balanced_accuracy_interval(*_canonical(truth, said), seed)
    return {"n_positive": c.n_positive, "n_negative": c.n_negative, "true_positive": c.true_positive,
            "false_positive": c.false_positive, "true_negative": c.true_negative,
            "false_negative": c.false_negative, "balanced_accuracy": c.balanced_accuracy,
            "balanced_accuracy_ci_low": low, "balanced_accuracy_ci_high": high, "f1": c.f1,
            "auroc": auroc(truth, np.array(probability)) if probabilities else None,
            "excerpt_probability": [float(p) for p in probability]}


def intruder_rows(neurons: Sequence[NeuronRecords], judge: Judge, seed: int = 0,
                  k: int = ex.TRIAL_SIZE) -> list[dict]:
    """One row per neuron; the other neurons of the same layer and lineage supply the intruders."""
    plans, requests = [], []
    pools: dict[tuple, list[ex.Activating]] = {}
    for a in ex.activating(list(neurons)):
        pools.setdefault((a.records.model, a.records.gelu_variant, a.records.layer), []).append(a)
    firing = {a.records.key + (a.records.gelu_variant,): a for pool in pools.values() for a in pool}
    for records in neurons:
        row_seed = ex.seed_of(records, judges.INTRUDER, seed)
        own = firing.get(records.key + (records.gelu_variant,))
        pool = pools.get((records.model, records.gelu_variant, records.layer), [])
        trials = ex.intruder_trials(own, pool, row_seed, k=k) if own is not None else []
        plans.append((records, row_seed, trials, len(requests)))
        if not judge.offline:
            requests += [LLMRequest("chat", judge.model, judges.judge_params(
                judges.intruder_messages(t), judges.INTRUDER_SCHEMA, 1, None)) for t in trials]
    picks: list[tuple[int | None, str | None]] = []
    if requests:
        flat = [t for _, _, trials, _ in plans for t in trials]

        def parse(i: int, result) -> tuple[Any, str | None]:
            choices = (result.response or {}).get("choices") or []
            return judges.parse_intruder(choices[0], len(flat[i].excerpts)) if choices else \
                (None, "the reply has no choices")

        picks = [(v, f) for _, v, f in judge.client.map_usable(requests, parse)]
    rows = []
    for records, row_seed, trials, at in plans:
        row = {"model": records.model, "gelu_variant": records.gelu_variant, "layer": records.layer,
               "neuron": records.neuron, "judge": judge.name, "judge_model": judge.model,
               "chance": 1 / (k + 1), "bootstrap_seed": row_seed, "n_trials": len(trials), "failure_reason": None,
               **dict.fromkeys(("n_correct", "accuracy", "accuracy_ci_low", "accuracy_ci_high"))}
        if not trials:
            row["failure_reason"] = "too few activating records for one trial (or no other neuron fires)"
            rows.append(row)
            continue
        got = [(judges.offline_intruder(t), None) for t in trials] if judge.offline else picks[at:at + len(trials)]
        failed = [f for _, f in got if f is not None]
        if failed:
            row["failure_reason"] = f"{len(failed)} of {len(trials)} trials failed: {failed[0]}"
        else:
            n_correct = sum(p == t.intruder for (p, _), t in zip(got, trials))
            low, high = accuracy_interval(len(trials), n_correct, row_seed)
            row.update(n_correct=n_correct, accuracy=n_correct / len(trials), accuracy_ci_low=low,
                       accuracy_ci_high=high)
        rows.append(row)
    return rows

