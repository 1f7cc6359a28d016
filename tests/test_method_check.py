"""`nxd check-method`: the known-answer check of a method set-up on planted neurons. Offline, every planted
neuron is recovered and scores near 1, above its null, on every scorer, and the random neurons do not beat
theirs; through an LLM endpoint (the local test server, the real openai client) the report counts the calls
and a second check sends none."""

from __future__ import annotations

import pytest
import torch

from nx_dagster import settings
from nx_dagster.model import open_checkpoint
from nx_dagster.model.planted import DEFAULT_TOKENS, build_planted_checkpoint
from nx_dagster.storage import Catalog
from nxd.cli import main
from tests.llm_server import FakeLLMServer


def test_planted_neurons_fire_on_their_token_alone(tmp_path):
    planted = build_planted_checkpoint(tmp_path / "ckpt", n_random=4)
    ckpt = open_checkpoint(str(planted.folder))
    model, tok = ckpt.load_model(), ckpt.load_tokenizer()
    ids = torch.tensor([tok.encode(t).ids[0] for t in DEFAULT_TOKENS])
    every = torch.arange(ckpt.config.vocab_size)
    from nx_dagster.model.planted import SCALE, THRESHOLD  # the pre-activation, exactly as built
    x = torch.nn.functional.layer_norm(model.wte[every][:, None, :] + model.wpe[None, :, :], (model.wte.shape[1],))
    blk = model.blocks[0]
    pre = torch.einsum("vpd,nd->nvp", x, blk.fc_w[:len(ids)]) + blk.fc_b[:len(ids), None, None]
    for n, i in enumerate(ids):
        assert pre[n, i].min() >= 2.0 - 1e-4  # its token fires at every position
        others = torch.cat([pre[n, :i], pre[n, i + 1:]])
        assert others.max() <= -1.0 + 1e-4  # no other token comes near
    assert planted.tokens == dict(enumerate(DEFAULT_TOKENS)) and planted.n_neurons == len(ids) + 4
    assert SCALE > 0 and 0 < THRESHOLD < 1


def test_offline_methods_recover_every_planted_neuron(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = tmp_path / "root"
    assert main(["check-method", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "12/12 planted meanings recovered" in out and "FAIL" not in out
    rows = Catalog(str(home)).query("SELECT * FROM method_checks ORDER BY scorer").to_pylist()
    assert [r["scorer"] for r in rows] == ["detection", "fuzzing", "intruder", "simulation"]
    for r in rows:
        assert r["passed"] and r["n_recovered"] == r["n_planted"] == 12 and r["llm_calls"] == 0
        assert r["planted_mean"] > 0.95 and r["planted_above_null"] == 1.0
        assert r["random_above_null"] is None or r["random_above_null"] < 0.3  # random neurons do not beat nulls
    assert {r["check_id"] for r in rows} == {rows[0]["check_id"]}


def test_an_llm_set_up_is_checked_through_the_ledger(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = str(tmp_path / "root")
    flags = ["check-method", "--home", home, "--explainer", "token_activation_pairs", "--simulator",
             "json_logprobs", "--judge", "json_logprobs", "--random", "4", "--sequences", "600"]
    with FakeLLMServer() as server:
        with settings.use(settings.from_values(openai_api_key="sk-test-000000", openai_base_url=server.base_url)):
            first = main(flags)
            sent = server.count()
            second = main(flags)
        assert sent > 0 and server.count() == sent  # the second check is answered from the ledger
    out = capsys.readouterr().out
    assert first == second and f"{sent} LLM calls" in out
    rows = Catalog(home).query("SELECT * FROM method_checks ORDER BY created_at, scorer").to_pylist()
    assert len(rows) == 8 and {r["judge_model"] for r in rows} == {"gpt-4o-mini"}
    assert all(r["prompt_tokens"] > 0 and r["n_planted"] == 12 for r in rows)
    # the test server's explainer writes prose ("the words The, ..."): read case-blind and without stop words,
    # it cannot name " The", " the", "The", "(", " is" or " of", so the set-up fails its check (exit 1)
    assert rows[0]["n_recovered"] == 6 and first == 1 and "FAIL" in out


@pytest.mark.parametrize("bad", [["--judge", "oracle"], ["--random", "-1"]])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, bad, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["check-method", "--home", str(tmp_path / "root"), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nxd: error: ") and "Fix: " in err[-1]
