"""`nxd check-method`: a method set-up (explainer, simulator, judge) run on neurons whose meaning is known.

A checkpoint with planted layer-0 neurons (`model.planted`: each fires on exactly one token) and random
neurons beside them is recorded on the bundled corpus in a scratch data root; the set-up explains, simulates
and judges every neuron there, through the caller's LLM client and ledger. Per scorer the report says:
how many planted meanings were recovered (the explanation names the planted token, read as the offline
methods read it), the mean score, interval and null of planted and of random neurons, the share above
their null, the LLM calls, tokens and cost per neuron, and the time. A set-up passes when it recovers
every planted neuron and the planted neurons' scores lie above their nulls (every scorer with a score).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from nx_dagster.activations import RecorderSettings
from nx_dagster.corpus import CorpusSpec
from nx_dagster.explain import LLMClient, classify
from nx_dagster.explain.naming import token_matcher
from nx_dagster.model import open_checkpoint
from nx_dagster.model.planted import build_planted_checkpoint
from nx_dagster.stages.activations import Progress, write_activations, write_model, write_sequences
from nx_dagster.stages.classify import write_classification_scores, write_intruder_scores
from nx_dagster.stages.explain import write_explanations, write_scores
from nx_dagster.storage import Catalog, schema
from nx_dagster.subject import Subject
from nx_dagster.vocab import DETECTION, FUZZING, INTRUDER, POST_FIX, SIMULATION, TOKEN_LOOKUP

SEQUENCES = 2000  # of the bundled corpus: every planted token occurs in far more than the top records need
VARIANT = POST_FIX


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _group(rows: list[dict], score: str, low: str, null: str | None, chance: float | None) -> dict:
    """Mean score, mean interval low, mean null and the share of the rows whose interval lies above their
    null. The null is `chance` for the intruder; a simulation null whose prediction is constant (no
    correlation) counts as 0, the correlation of a prediction that says nothing."""
    def null_of(r: dict) -> float | None:
        if null is None:
            return chance
        if r[null] is None and r.get("null_explanation_id") and null == "null_ev_correlation":
            return 0.0
        return r[null]

    pairs = [(r[low], null_of(r)) for r in rows if r[low] is not None and null_of(r) is not None]
    return {"mean": _mean([r[score] for r in rows]), "ci_low_mean": _mean([r[low] for r in rows]),
            "null_mean": _mean([n for _, n in pairs]) if pairs else None,
            "above_null": sum(lo > n for lo, n in pairs) / len(pairs) if pairs else None}


def check_method(explainer: str, simulator: str, judge: classify.Judge, client: LLMClient | None,
                 n_random: int = 20, sequences: int = SEQUENCES, report: Progress | None = None,
                 workdir: Path | None = None) -> list[dict]:
    """Rows of `method_checks`, one per scorer (simulation, detection, fuzzing, intruder)."""
    t0 = time.perf_counter()
    keys_before = set(client.keys_used) if client else set()
    with tempfile.TemporaryDirectory(prefix="nx-method-check-", dir=workdir) as tmp:
        planted = build_planted_checkpoint(Path(tmp) / "checkpoint", n_random=n_random)
        cat = Catalog(str(Path(tmp) / "root"))
        s = Subject(open_checkpoint(str(planted.folder)), CorpusSpec(None, 64, sequences), "cpu")
        if report:
            report(f"check-method: recording {planted.n_neurons} layer-0 neurons "
                   f"({len(planted.tokens)} planted) on {sequences} bundled sequences")
        write_model(cat, s)
        write_sequences(cat, s)
        write_activations(cat, s, [VARIANT], [0], RecorderSettings(20, 20, 5, 0, 64))
        args = (cat, s.name, s.corpus.name)
        write_explanations(*args, VARIANT, [0], None, explainer, client, report=report)
        write_scores(*args, VARIANT, VARIANT, [0], None, explainer, simulator, client, report=report,
                     null_fraction=1.0)
        write_classification_scores(*args, VARIANT, VARIANT, [0], None, explainer, judge, null_fraction=1.0,
                                    report=report)
        write_intruder_scores(*args, VARIANT, [0], None, judge, report=report)
        explained = {r["neuron"]: r["explanation"] for r in cat.query(
            "SELECT neuron, explanation FROM explanations").to_pylist()}
        by_scorer = {
            SIMULATION: (cat.query("SELECT * FROM scores").to_pylist(),
                         ("ev_correlation", "ev_correlation_ci_low", "null_ev_correlation")),
            **{scorer: (cat.query("SELECT * FROM classification_scores WHERE scorer = ?", [scorer]).to_pylist(),
                        ("balanced_accuracy", "balanced_accuracy_ci_low", "null_balanced_accuracy"))
               for scorer in (DETECTION, FUZZING)},
            INTRUDER: (cat.query("SELECT * FROM intruder_scores").to_pylist(),
                       ("accuracy", "accuracy_ci_low", None)),
        }
    recovered = sum(bool(explained.get(n)) and token_matcher(explained[n])(token)
                    for n, token in planted.tokens.items())
    keys = [k for k in (client.keys_used if client else []) if k not in keys_before]
    calls = client.ledger.summary(keys) if client else {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                                        "cost_usd": 0.0}
    seconds = time.perf_counter() - t0
    check_id, now = uuid.uuid4().hex[:12], datetime.now(timezone.utc)
    out = []
    for scorer, (rows, (score, low, null)) in by_scorer.items():
        chance = rows[0]["chance"] if scorer == INTRUDER and rows else None
        planted_rows = [r for r in rows if r["neuron"] in planted.tokens]
        random_rows = [r for r in rows if r["neuron"] not in planted.tokens]
        p, q = _group(planted_rows, score, low, null, chance), _group(random_rows, score, low, null, chance)
        out.append({
            "check_id": check_id, "created_at": now, "explainer": explainer,
            "explainer_model": client.settings.explainer_model if client and explainer != TOKEN_LOOKUP else None,
            "simulator": simulator,
            "simulator_model": client.settings.simulator_model if client and simulator != TOKEN_LOOKUP else None,
            "judge": judge.name,
            "judge_model": judge.model, "scorer": scorer, "n_planted": len(planted.tokens),
            "n_recovered": recovered, "n_random": n_random, "planted_mean": p["mean"],
            "planted_ci_low_mean": p["ci_low_mean"], "planted_null_mean": p["null_mean"],
            "planted_above_null": p["above_null"], "random_mean": q["mean"], "random_null_mean": q["null_mean"],
            "random_above_null": q["above_null"], "llm_calls": calls["calls"],
            "prompt_tokens": calls["prompt_tokens"], "completion_tokens": calls["completion_tokens"],
            "cost_usd_per_neuron": (calls["cost_usd"] or 0.0) / planted.n_neurons if client else 0.0,
            "seconds": seconds,
            "passed": recovered == len(planted.tokens) and p["above_null"] == 1.0,
        })
    return out


def write_method_check(catalog: Catalog, rows: list[dict]) -> pa.Table:
    """Append one check's rows to `method_checks` (a check is never replaced: each run is its own)."""
    table = schema.rows_to_table("method_checks", rows)
    catalog.replace("method_checks", table, {"check_id": [rows[0]["check_id"]]},
                    f"method check {rows[0]['check_id']}")
    return table
