"""The token activation summary matches a brute-force mean per (token, neuron), with bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nx_dagster.activations.token_summary import SUMMARY_SCHEMA, TokenSummary, eligible_tokens
from nx_dagster.model.token_strings import token_bytes
from tests.checkpoints import word_tokenizer

VOCAB, NEURONS = 60, 9


def batches(seed: int, n: int = 5, b: int = 3, t: int = 11):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (b, t), generator=gen) ** 2 // VOCAB  # skewed: low ids frequent
        yield ids, torch.randn(b, t, NEURONS, generator=gen).double()


def brute_force(data, eligible: set[int], min_count: int, k: int):
    ids = torch.cat([i.reshape(-1) for i, _ in data]).numpy()
    post = torch.cat([p.reshape(-1, NEURONS) for _, p in data]).numpy()
    out = {}
    for n in range(NEURONS):
        cands = []
        for tok in sorted(eligible):
            hits = post[ids == tok, n]
            if len(hits) >= min_count:
                cands.append((-hits.mean(), tok, len(hits)))
        cands.sort()
        out[n] = [(tok, -neg, cnt) for neg, tok, cnt in cands[:k]]
    return out


@pytest.mark.parametrize("min_count,max_tokens,k", [(1, 64, 5), (5, 64, 4), (3, 12, 30)])
def test_summary_matches_brute_force(min_count, max_tokens, k):
    data = list(batches(0))
    counts = torch.bincount(torch.cat([i.reshape(-1) for i, _ in data]), minlength=VOCAB)
    eligible = eligible_tokens(counts, min_count=min_count, max_tokens=max_tokens)
    summary = TokenSummary(NEURONS, VOCAB, eligible, min_count=min_count, max_tokens=max_tokens, dtype=torch.float64)
    for ids, post in data:
        summary.update(ids, post)
    tok = word_tokenizer(VOCAB)
    table = summary.rows("m", "corpus", "post_fix", 2, tok, k=k)
    assert table.schema == SUMMARY_SCHEMA
    want = brute_force(data, set(eligible.tolist()), min_count, k)
    d = table.to_pydict()
    for n in range(NEURONS):
        idx = [i for i in range(table.num_rows) if d["neuron"][i] == n]
        assert [d["rank"][i] for i in idx] == list(range(len(want[n])))
        assert [d["token_id"][i] for i in idx] == [t for t, _, _ in want[n]]
        assert [d["count"][i] for i in idx] == [c for _, _, c in want[n]]
        np.testing.assert_allclose([d["mean_activation"][i] for i in idx], [m for _, m, _ in want[n]], rtol=1e-6)
    # the one decoder's strings: the tokenizer's own bytes (its decode is lossy only where they are not UTF-8)
    assert all(token_bytes(t).decode("utf-8", "replace") == tok.decode([i], skip_special_tokens=False)
               for i, t in zip(d["token_id"], d["token"]))
    assert set(d["gelu_variant"]) == {"post_fix"} and set(d["layer"]) == {2}


def test_eligible_tokens_caps_by_frequency_then_lower_id():
    counts = torch.tensor([9, 2, 7, 7, 7, 0, 30])
    assert eligible_tokens(counts, min_count=3, max_tokens=10).tolist() == [0, 2, 3, 4, 6]
    assert eligible_tokens(counts, min_count=3, max_tokens=3).tolist() == [0, 2, 6]  # 7s tie: id 2 kept


def test_equal_means_rank_lower_token_first():
    summary = TokenSummary(2, 10, min_count=1, max_tokens=10)
    ids = torch.tensor([[7, 3, 5, 3]])
    summary.update(ids, torch.ones(1, 4, 2))
    table = summary.rows("m", "c", "pre_fix", 0, word_tokenizer(10), k=2)
    assert table.filter(table["neuron"].to_numpy() == 0)["token_id"].to_pylist() == [3, 5]


def test_memory_is_bounded_and_merge_adds_up():
    with pytest.raises(ValueError, match="eligible_token_ids"):
        TokenSummary(NEURONS, 50_000, max_tokens=4096)
    eligible = torch.arange(0, VOCAB, 2)
    whole, a, b = (TokenSummary(NEURONS, VOCAB, eligible, min_count=1, dtype=torch.float64) for _ in range(3))
    for i, (ids, post) in enumerate(batches(1)):
        whole.update(ids, post)
        (a if i % 2 else b).update(ids, post)
    a.merge(b)
    assert torch.allclose(a.sums, whole.sums) and torch.equal(a.counts, whole.counts)
    assert whole.memory_bytes == whole.sums.nbytes + whole.counts.nbytes
    assert whole.sums.shape == (NEURONS, len(eligible) + 1)  # neuron-major


def test_no_eligible_tokens_gives_no_rows():
    summary = TokenSummary(NEURONS, VOCAB, torch.tensor([1, 2]), min_count=1000)
    for ids, post in batches(2):
        summary.update(ids, post)
    assert summary.rows("m", "c", "pre_fix", 0, word_tokenizer(VOCAB)).num_rows == 0
