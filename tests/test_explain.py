"""Explainers and simulators: offline, and over real HTTP against tests/llm_server.py."""

from __future__ import annotations

import json
import math
import re

import pyarrow as pa
import pytest

from nx_dagster.explain import (
    ActivationRecord, EchoUnsupportedError, LLMClient, LLMSettings, Ledger, NeuronRecords,
    explain_neurons, explanation_variants, explanations_from_table, explanations_table, neuron_records_from_arrow,
    pair_by_neuron, score_simulations, simulate, simulations_table, token_lookup_explanation,
)
from nx_dagster.explain.prompts import scale_activations
from nx_dagster.explain.simulators import token_lookup_values
from nx_dagster.storage.schema import TABLES
from tests.llm_server import Fault, FakeLLMServer, demo_neurons

KEY = "sk-test-explain-000000"


@pytest.fixture
def server():
    with FakeLLMServer(api_key=KEY) as s:
        yield s


@pytest.fixture
def client(server, tmp_path):
    """No re-asks: each scripted fault reaches the result (re-asking is tested on its own)."""
    return LLMClient(LLMSettings(api_key=KEY, base_url=server.base_url, concurrency=1, max_attempts=2,
                                 backoff_s=0.01, timeout_s=5, reasks=0), Ledger(tmp_path / "ledger.sqlite"))


def neuron(records: list[ActivationRecord], variant: str = "post_fix") -> NeuronRecords:
    return NeuronRecords("m", variant, 1, 7, records)


def rec(tokens, acts, split="train", kind="top", sid=0, rank=0) -> ActivationRecord:
    return ActivationRecord(sid, list(tokens), list(acts), kind, split, rank)


# -- offline ----------------------------------------------------------------------------------------
def test_token_lookup_explainer_names_the_strongest_train_tokens_deterministically():
    n = neuron([rec([" Paris", " is", " big"], [4.0, 0.1, -1.0]),
                rec([" London", " and", " Paris"], [3.0, 0.0, 3.5], sid=1, rank=4),
                rec([" Rome"], [99.0], split="valid", sid=2, rank=2)])  # not train: ignored
    e = token_lookup_explanation(n)
    assert e.explanation == 'fires on tokens: " Paris", " London"' and e.failure_reason is None
    assert e == token_lookup_explanation(n) and e.explanation_id.startswith("x")
    # quoted tokens are read exactly: "Paris" (no leading space) is another token (issue 21's " The" neuron)
    assert token_lookup_values(e.explanation, [" Paris", "Paris", " Rome", " London"]) == [10, 0, 0, 10]
    dead = token_lookup_explanation(neuron([rec(["a", "b"], [-0.2, 0.0])]))
    assert dead.explanation is None and "no positive activation" in dead.failure_reason


def test_token_lookup_simulator_reads_only_the_explanation():
    expl = token_lookup_explanation(neuron([rec([" cat", " dog"], [1.0, 0.0])]))
    a = neuron([rec([" cat", " sat"], [0.0, 9.0], split="valid", sid=5)])
    b = neuron([rec([" cat", " sat"], [5.0, -3.0], split="valid", sid=5)])
    sa, sb = simulate([(expl, a)]), simulate([(expl, b)])
    assert sa[0].expected_activations == sb[0].expected_activations == [10.0, 0.0]
    assert token_lookup_values("the word cat and the", [" cat", " the", "x"]) == [10.0, 0.0, 0.0]


def test_records_from_arrow_and_tables_match_the_schema():
    records = pa.table({"model": ["m"] * 2, "gelu_variant": ["pre_fix"] * 2, "layer": [0, 0], "neuron": [3, 3],
                        "kind": ["top", "random"], "rank": [0, 0], "split": ["train", "valid"],
                        "sequence_id": [10, 11], "activations": [[1.0, 2.0], [0.0, 0.5]]})
    seqs = pa.table({"sequence_id": [10, 11], "tokens": [["a", "b"], ["c", "b"]]})
    (n,) = neuron_records_from_arrow(records, seqs)
    assert (n.gelu_variant, n.layer, n.neuron, len(n.records)) == ("pre_fix", 0, 3, 2)
    ex = explain_neurons([n])
    table = explanations_table(ex)
    assert table.schema == TABLES["explanations"]
    assert explanations_from_table(table) == ex
    sims = simulations_table(simulate(pair_by_neuron(ex, [n])))
    assert sims.schema == TABLES["simulations"] and sims.num_rows == 1


def test_pre_fix_explanations_scored_on_post_fix_activations_keep_both_lineages():
    pre, post = demo_neurons(2, gelu_variant="pre_fix"), demo_neurons(2, gelu_variant="post_fix")
    ex = explain_neurons(pre)
    scores = score_simulations(simulations_table(simulate(pair_by_neuron(ex, post))), explanation_variants(ex))
    assert scores.schema == TABLES["scores"]
    assert set(scores.column("explanation_gelu_variant").to_pylist()) == {"pre_fix"}
    assert set(scores.column("gelu_variant").to_pylist()) == {"post_fix"}
    assert all(v is not None and v > 0.9 for v in scores.column("ev_correlation").to_pylist())


# -- LLM explainer over HTTP ------------------------------------------------------------------------
def test_explainer_prompt_shows_train_tokens_scaled_0_to_10(server, client):
    n = neuron([rec([" Paris", " is", "\tx"], [4.0, 1.9, -2.0], rank=0),
                rec([" London", " a"], [2.0, 0.0], split="train", sid=1, rank=4),
                rec([" Secret"], [50.0], split="valid", sid=2, rank=2)])
    (e,) = explain_neurons([n], "token_activation_pairs", client)
    assert e.explanation == "the words Paris" and e.explainer_model == "gpt-4o-mini"
    prompt = server.requests[0][1]["messages"][1]["content"]
    assert re.findall(r"^(.*)\t(\d+)$", prompt, re.M) == [
        (" Paris", "10"), (" is", "4"), ("\\tx", "0"), (" London", "5"), (" a", "0")]
    assert "Secret" not in prompt
    assert scale_activations([4.0, 3.99, -1, 0.4], 4.0) == [10, 9, 0, 1]


@pytest.mark.parametrize("fault, reason", [
    (Fault(content="I'm sorry, but I can't help with that."), "refused"),
    (Fault(refusal="I cannot assist with this request."), "refused: I cannot assist"),
    (Fault(content="The neuron seems to like cities"), "unparseable reply"),
    (Fault(content="Explanation: cities in Eur", finish_reason="length"), "truncated"),
    (Fault(status=400, message="context too long"), "LLM call failed (rejected): HTTP 400"),
])
def test_explainer_failures_are_null_with_a_reason(server, client, fault, reason):
    server.add_fault(fault)
    (e,) = explain_neurons(demo_neurons(1), "token_activation_pairs", client)
    assert e.explanation is None and reason in e.failure_reason
    assert explanations_table([e]).column("explanation").to_pylist() == [None]
    (entry,) = client.ledger.entries()
    again = explain_neurons(demo_neurons(1), "token_activation_pairs", client)
    if fault.status == 400:  # definitive: answered from the ledger, not sent again
        assert entry.status == "rejected" and again == [e] and server.count() == 1
    else:  # paid but unusable: a rerun re-asks it (a new attempt key), and keeps the first reply too
        assert entry.status == "unusable" and reason in entry.error
        assert again[0].explanation == "the words w0" and server.count() == 2
        assert [x.status for x in client.ledger.entries()] == ["unusable", "ok"]


def test_explainer_candidates(server, client):
    ex = explain_neurons(demo_neurons(2), "token_activation_pairs", client, n_candidates=3)
    assert [(e.neuron, e.candidate) for e in ex] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert server.count() == 2 and server.requests[0][1]["n"] == 3
    assert len({e.explanation_id for e in ex}) == 6


# -- simulators over HTTP ---------------------------------------------------------------------------
def _one(simulator, client, neurons=None):
    neurons = neurons or demo_neurons(1)
    ex = explain_neurons(neurons)
    return simulate(pair_by_neuron(ex, neurons), simulator, client)


def _expected(tokens, word):
    hot = 0.7 * 10 + 0.2 * 9
    return [pytest.approx(hot if t == word else 0.1) for t in tokens]


def test_json_logprobs_expected_values_from_top_logprobs(server, client):
    sims = _one("json_logprobs", client)
    body = server.requests[0][1]
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["response_format"]["type"] == "json_schema"
    for s in sims:
        assert s.failure_reason is None and s.split in ("valid", "calibration")
        assert s.expected_activations == _expected(_tokens(s), " w0")


def _tokens(sim):
    return next(r.tokens for r in demo_neurons(1)[0].records if r.sequence_id == sim.sequence_id)


def test_echo_logprobs_one_completion_per_sequence(server, client):
    sims = _one("echo_logprobs", client)
    assert server.count("/v1/completions") == len(sims) and server.count() == len(sims)
    body = server.requests[0][1]
    assert body["echo"] is True and body["max_tokens"] == 0 and body["logprobs"] > 0
    assert body["prompt"].rstrip().endswith("<end>") and "\tunknown\n" in body["prompt"]
    for s in sims:
        assert s.failure_reason is None and s.expected_activations == _expected(_tokens(s), " w0")


def test_echo_rejected_by_the_endpoint_fails_clearly(tmp_path):
    with FakeLLMServer(reject_echo=True) as server:
        client = LLMClient(LLMSettings(base_url=server.base_url, concurrency=4), Ledger(tmp_path / "l.sqlite"))
        with pytest.raises(EchoUnsupportedError, match="json_logprobs"):
            _one("echo_logprobs", client)
        assert server.count() == 1


def test_logprob_free_parses_the_written_numbers(server, client):
    sims = _one("logprob_free", client)
    assert "logprobs" not in server.requests[0][1]
    for s in sims:
        assert s.expected_activations == [10.0 if t == " w0" else 0.0 for t in _tokens(s)]


@pytest.mark.parametrize("fault, reason", [
    (Fault(content='{"activations": [0, 1, two]}'), "malformed structured output"),
    (Fault(content='{"activations": [0, 0, 10', finish_reason="length"), "truncated structured output"),
    (Fault(content='{"activations": [0, 1]}'), "has 2 values for 8 tokens"),
    (Fault(refusal="I can't do that"), "refused"),
    (Fault(status=500), "LLM call failed (transient)"),
])
@pytest.mark.parametrize("simulator", ["json_logprobs", "logprob_free"])
def test_bad_structured_output_is_a_failure_not_a_number(server, client, fault, reason, simulator):
    server.add_fault(*[fault] * (2 if fault.status >= 500 else 1))  # a 500 fails both attempts
    sims = _one(simulator, client)
    assert sims[0].expected_activations is None and reason in sims[0].failure_reason
    assert sims[0].failure_reason.startswith("unusable reply (1 asks): " if fault.status == 200 else "LLM call")
    assert all(s.failure_reason is None for s in sims[1:])
    scores = score_simulations(simulations_table(sims))
    (row,) = scores.to_pylist()
    assert row["ev_correlation"] is None and row["rsquared"] is None
    assert row["failure_reason"].startswith("simulation failed for 1 of")
    assert len(client.ledger.entries()) == len(sims)


def test_missing_logprobs_fail_json_logprobs(server, client):
    server.add_fault(Fault(content='{"activations":[0,0,0,0,0,0,0,0]}'))  # the fake omits logprobs then
    sims = _one("json_logprobs", client)
    assert sims[0].expected_activations is None and "logprob_free" in sims[0].failure_reason
    assert not any(math.isnan(v) for s in sims[1:] for v in s.expected_activations)
    json.dumps([s.__dict__ for s in sims])


def test_json_logprobs_tokenizers_that_split_numbers():
    from nx_dagster.explain.simulators import parse_json_logprobs

    def tok(t, alts):
        return {"token": t, "logprob": 0.0, "top_logprobs": [{"token": a, "logprob": math.log(p)} for a, p in alts]}

    content = [tok('{"activations":[', []), tok("1", [("1", 0.5), ("0", 0.25), ("9", 0.25)]), tok("0", [("0", 1.0)]),
               tok(",", []), tok(" 3", [(" 3", 0.5), (" 4", 0.5)]), tok("]}", [])]
    choice = {"message": {"content": "".join(c["token"] for c in content)}, "finish_reason": "stop",
              "logprobs": {"content": content}}
    values, failure = parse_json_logprobs(choice, 2)
    assert failure is None and values == [pytest.approx(0.5 * 10 + 0.25 * 9), pytest.approx(3.5)]


@pytest.mark.parametrize("fault, reason", [
    (Fault(values="short"), "has 7 values for 8 tokens"),
    (Fault(values="range"), "values outside 0..10 (11)"),
    (Fault(body="<html>502 Bad Gateway</html>"), "non-JSON reply"),
    (Fault(refusal="I can't do that"), "refused: I can't do that"),
    (Fault(content='{"activations": [0, 0, 0, 0, 0, 0, 0, "x"]}'), "non-numeric values ('x')"),
])
def test_an_unusable_reply_is_re_asked_and_ledgered_not_lost(server, tmp_path, fault, reason):
    client = LLMClient(LLMSettings(api_key=KEY, base_url=server.base_url, concurrency=1, max_attempts=2,
                                   backoff_s=0.01, timeout_s=5, reasks=2), Ledger(tmp_path / "ledger.sqlite"))
    server.add_fault(fault)
    sims = _one("json_logprobs", client)
    assert all(s.failure_reason is None for s in sims) and server.count() == len(sims) + 1
    entries = client.ledger.entries()
    (bad,) = [x for x in entries if x.status != "ok"]
    assert bad.status == "unusable" and reason in bad.error and len(entries) == len(sims) + 1
    assert client.stats.unusable == 1 and client.stats.reasked == 1
    assert _one("json_logprobs", client) == sims and server.count() == len(sims) + 1  # a rerun sends nothing

    server.add_fault(fault, fault, fault)  # every ask of one sequence unusable: it fails after 3 asks
    n = demo_neurons(2)[1]
    neurons = [NeuronRecords(n.model, n.gelu_variant, n.layer, n.neuron,
                             [r for r in n.records if r.split != "calibration" and r.kind == "top"])]
    sims = _one("json_logprobs", client, neurons)
    assert len(sims) == 1 and sims[0].expected_activations is None
    assert sims[0].failure_reason.startswith("unusable reply (3 asks): ") and reason in sims[0].failure_reason


def test_no_digit_among_top_logprobs_fails_the_sequence_not_the_written_number():
    from nx_dagster.explain.simulators import parse_json_logprobs

    def tok(t, alts):
        return {"token": t, "logprob": 0.0, "top_logprobs": [{"token": a, "logprob": math.log(p)} for a, p in alts]}

    content = [tok('{"activations":[', []), tok("7", [("seven", 0.6), ("x", 0.4)]), tok(",", []),
               tok("3", [("3", 1.0)]), tok("]}", [])]
    choice = {"message": {"content": "".join(c["token"] for c in content)}, "finish_reason": "stop",
              "logprobs": {"content": content}}
    values, failure = parse_json_logprobs(choice, 2)
    assert values is None and "no 0..10 number among the top_logprobs of value 0 (written '7')" in failure


def _echo_reply(server, prompt):
    return server.completion_reply({"prompt": prompt, "echo": True, "logprobs": 5}, None)


def test_echo_misalignment_names_its_cause():
    from nx_dagster.explain.prompts import echo_prompt
    from nx_dagster.explain.simulators import parse_echo

    server = FakeLLMServer()
    try:
        prompt, offsets = echo_prompt("the words w0", [" w0", " w1", "\t"])
        good = _echo_reply(server, prompt)
        values, failure = parse_echo(good, offsets, prompt)
        assert failure is None and len(values) == 3

        lp = good["choices"][0]["logprobs"]  # a BOS token echoed first: every offset after it shifted by 3
        bos = {"choices": [{"logprobs": {"tokens": ["<s>"] + lp["tokens"], "top_logprobs": [None] + lp["top_logprobs"],
                                          "text_offset": [0] + [o + 3 for o in lp["text_offset"]]}}]}
        values, failure = parse_echo(bos, offsets, prompt)
        assert values is None and "'<s>' (a BOS token)" in failure and "shifted by 3" in failure
        assert "merged" not in failure

        shifted = {"choices": [{"logprobs": {**lp, "text_offset": [o + 13 for o in lp["text_offset"]]}}]}
        values, failure = parse_echo(shifted, offsets, prompt)
        assert values is None and "text_offset is shifted" in failure and "BOS" in failure

        tokens, tops, offs = list(lp["tokens"]), list(lp["top_logprobs"]), list(lp["text_offset"])
        k = offs.index(offsets[0])  # the tokenizer merges "\t" and "unknown" into one token
        tokens[k - 1:k + 1] = ["\tunknown"]
        tops[k - 1:k + 1] = [{"\tunknown": -0.1}]
        offs[k - 1:k + 1] = [offs[k - 1]]
        merged = {"choices": [{"logprobs": {"tokens": tokens, "top_logprobs": tops, "text_offset": offs}}]}
        values, failure = parse_echo(merged, offsets, prompt)
        assert values is None and "no token starts at value position 0" in failure
        assert "'\\tunknown'" in failure and "merged the placeholder" in failure
    finally:
        server._httpd.server_close()  # never started: nothing to shut down


def test_an_endpoint_whose_echo_is_shifted_by_a_bos_token_stops_with_that_cause(tmp_path):
    class BosServer(FakeLLMServer):
        def completion_reply(self, body, fault):
            reply = super().completion_reply(body, fault)
            lp = reply["choices"][0]["logprobs"]
            lp.update(tokens=["<|endoftext|>"] + lp["tokens"], top_logprobs=[None] + lp["top_logprobs"],
                      token_logprobs=[None] + lp["token_logprobs"],
                      text_offset=[0] + [o + len("<|endoftext|>") for o in lp["text_offset"]])
            return reply

    with BosServer() as server:
        client = LLMClient(LLMSettings(base_url=server.base_url, concurrency=2), Ledger(tmp_path / "l.sqlite"))
        with pytest.raises(EchoUnsupportedError, match="BOS token.*shifted by 13") as err:
            _one("echo_logprobs", client)
        assert "merged" not in str(err.value) and server.count() == 1
