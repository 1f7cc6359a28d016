"""The LLM judges through the real `openai` client against the local test server: prompt → reply →
row, probabilities and AUROC, unusable replies re-asked then NULL with a reason, a rerun sends nothing."""

from __future__ import annotations

import pytest

from nx_dagster.explain import classify
from nx_dagster.explain.judges import DETECTION, FUZZING
from nx_dagster.explain.ledger import Ledger
from nx_dagster.explain.llm import LLMClient, LLMSettings
from nx_dagster.explain.records import Explanation
from tests.llm_server import Fault, FakeLLMServer
from tests.test_judges import neuron

KEY = "sk-test-SECRET-0123456789"
TOKENS = [" cat", " mat", " Paris", " France"]


@pytest.fixture
def server():
    with FakeLLMServer(api_key=KEY) as s:
        yield s


def judge(server, tmp_path, name: str) -> classify.Judge:
    settings = LLMSettings(api_key=KEY, base_url=server.base_url, concurrency=2, timeout_s=5.0, max_attempts=2,
                           backoff_s=0.01, max_backoff_s=0.05)
    return classify.Judge(name, LLMClient(settings, Ledger(tmp_path / "ledger.sqlite")), "judge-model")


def pairs():
    neurons = [neuron(t, n=i, seed=i) for i, t in enumerate(TOKENS)]
    return [(Explanation(n.model, n.gelu_variant, 0, n.neuron, "token_lookup", None, "v", 0,
                         f"the word{t}", explanation_id=f"e{n.neuron}"), n) for n, t in zip(neurons, TOKENS)]


@pytest.mark.parametrize("scorer", [DETECTION, FUZZING])
def test_llm_judge_rows_and_rerun(server, tmp_path, scorer):
    j = judge(server, tmp_path, "json_logprobs")
    rows = classify.classification_rows(scorer, pairs(), j, null_fraction=1.0)
    assert server.count() == 8  # one question per neuron, one per null
    for r in rows:
        assert r["failure_reason"] is None and r["judge_model"] == "judge-model"
        assert r["balanced_accuracy"] == 1.0 and r["auroc"] == 1.0
        assert all(p in (0.8, 0.1) or abs(p - 0.8) < 1e-9 or abs(p - 0.1) < 1e-9 for p in r["excerpt_probability"])
        assert r["null_balanced_accuracy"] is not None and r["null_balanced_accuracy"] <= 0.5
    again = classify.classification_rows(scorer, pairs(), judge(server, tmp_path, "json_logprobs"), null_fraction=1.0)
    assert server.count() == 8 and again == rows  # answered from the ledger


def test_logprob_free_judge_has_no_auroc_and_a_bad_reply_is_null_with_reason(server, tmp_path):
    j = judge(server, tmp_path, "logprob_free")
    rows = classify.classification_rows(DETECTION, pairs()[:1], j, null_fraction=0.0)
    assert rows[0]["balanced_accuracy"] == 1.0 and rows[0]["auroc"] is None
    bad = Fault(content='{"answers": [1]}')  # too few answers, every time it is asked
    server.add_fault(bad, bad, bad)
    j = judge(server, tmp_path / "other", "logprob_free")
    row = classify.classification_rows(DETECTION, pairs()[1:2], j, null_fraction=0.0)[0]
    assert row["balanced_accuracy"] is None and "unusable reply (3 asks)" in row["failure_reason"]


def test_llm_intruder(server, tmp_path):
    neurons = [n for _, n in pairs()]
    rows = classify.intruder_rows(neurons, judge(server, tmp_path, "logprob_free"))
    assert server.count() == sum(r["n_trials"] for r in rows) == 12
    assert all(r["accuracy"] == 1.0 and r["failure_reason"] is None for r in rows)
