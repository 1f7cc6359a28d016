"""Activation-based token summary: per neuron, the tokens with the highest mean activation.

Gathered during the activation pass (one `TokenSummary` per layer, `update` once per batch) and turned
into `token_activation_summary` rows at the end. A token takes part only if it is *eligible* and occurs
at least `min_count` times (default 5), so that a token seen once with a large activation does not
dominate. The eligible tokens are fixed up front, from corpus token counts (`eligible_tokens`): the
`max_tokens` most frequent tokens with count >= min_count (default 4096).

Memory bound: (n_eligible + 1) × n_neurons × itemsize(dtype) for the sums plus (n_eligible + 1) × 8
for the counts, independent of the corpus and of the vocabulary beyond a [vocab] int64 lookup. With
the defaults and GPT-2 small (3072 neurons, float32) that is 50 MB per layer; GPT-2 XL (6400) 105 MB.
Sums are float32 by default; pass dtype=torch.float64 for very large corpora or exact comparisons.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from nx_dagster.connections.topk import tile_topk
from nx_dagster.model.token_strings import TokenStrings
from nx_dagster.storage.schema import computed_schema

log = logging.getLogger(__name__)

DEFAULT_MIN_COUNT = 5
DEFAULT_MAX_TOKENS = 4096
SUMMARY_SCHEMA = computed_schema("token_activation_summary")


def eligible_tokens(
    counts: Tensor, min_count: int = DEFAULT_MIN_COUNT, max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Tensor:
    """Ids (ascending) of the `max_tokens` most frequent tokens with count >= min_count.

    `counts` is a [vocab] tensor of corpus token counts (e.g. `torch.bincount(ids, minlength=vocab)`);
    among equally frequent tokens at the cut, lower ids are kept.
    """
    counts = counts.detach().cpu().to(torch.long)
    ids = torch.nonzero(counts >= min_count).flatten()
    if len(ids) > max_tokens:
        order = torch.argsort(counts[ids], descending=True, stable=True)  # ids ascending among equals
        ids = ids[order[:max_tokens]]
    return torch.sort(ids).values


class TokenSummary:
    """Running per-token sums and counts of one layer's post-GELU activations (see the module doc)."""

    def __init__(
        self, n_neurons: int, vocab_size: int, eligible_token_ids: Tensor | None = None,
        min_count: int = DEFAULT_MIN_COUNT, max_tokens: int = DEFAULT_MAX_TOKENS,
        dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
    ):
        if eligible_token_ids is None:
            if vocab_size > max_tokens:
                raise ValueError(
                    f"vocabulary of {vocab_size} exceeds max_tokens={max_tokens}: pass eligible_token_ids="
                    "eligible_tokens(corpus token counts) to bound memory")
            eligible_token_ids = torch.arange(vocab_size)
        ids = torch.unique(torch.as_tensor(eligible_token_ids, dtype=torch.long).cpu())  # sorted
        if len(ids) > max_tokens:
            raise ValueError(f"{len(ids)} eligible tokens exceed max_tokens={max_tokens}")
        if len(ids) and (int(ids[0]) < 0 or int(ids[-1]) >= vocab_size):
            raise ValueError(f"eligible token ids must lie in 0-{vocab_size - 1}")
        self.n_neurons, self.vocab_size, self.min_count, self.dtype = n_neurons, vocab_size, min_count, dtype
        self.token_ids = ids
        n = len(ids)
        slot = torch.full((vocab_size,), n, dtype=torch.long)  # slot n collects every other token
        slot[ids] = torch.arange(n)
        self._slot = slot
        self.sums: Tensor | None = None
        self.counts: Tensor | None = None
        if device is not None:
            self._allocate(torch.device(device))

    @property
    def memory_bytes(self) -> int:
        """The bound of the module doc for this instance."""
        n = len(self.token_ids) + 1
        return n * self.n_neurons * torch.tensor([], dtype=self.dtype).element_size() + n * 8

    def _allocate(self, device: torch.device) -> None:
        n = len(self.token_ids) + 1
        self._slot = self._slot.to(device)
        self.sums = torch.zeros((self.n_neurons, n), dtype=self.dtype, device=device)  # neuron-major
        self.counts = torch.zeros(n, dtype=torch.long, device=device)
        self._one = torch.ones(1, dtype=torch.long, device=device)

    def update(self, token_ids: Tensor, post: Tensor) -> None:
        """Add one batch: token ids [B, T] and post-GELU activations [B, T, N] of this layer."""
        if post.shape[-1] != self.n_neurons or post.shape[:-1] != token_ids.shape:
            raise ValueError(f"post {tuple(post.shape)} does not match token ids {tuple(token_ids.shape)} "
                             f"and {self.n_neurons} neurons")
        if self.sums is None:
            self._allocate(post.device)
        slot = self._slot[token_ids.reshape(-1).to(self._slot.device)]
        # post is usually neuron-major (the recorder's forward pass): [N, B·T] is then a free view
        by_neuron = post.permute(2, 0, 1).reshape(self.n_neurons, -1)
        # On-device scatter-adds, no host sync (bincount sizes its output from the data: a sync on a GPU).
        # On the CPU index_add_ adds in token order, so the sums are the same bit for bit on every run.
        self.sums.index_add_(1, slot, by_neuron.to(self.dtype))
        self.counts.index_add_(0, slot, self._one.expand(len(slot)))

    def merge(self, other: TokenSummary) -> None:
        """Add another summary of the same layer and eligible tokens (e.g. from another worker)."""
        if not torch.equal(self.token_ids, other.token_ids) or self.n_neurons != other.n_neurons:
            raise ValueError("can only merge summaries over the same eligible tokens and neurons")
        if other.sums is None:
            return
        if self.sums is None:
            self._allocate(other.sums.device)
        self.sums += other.sums.to(self.sums.device)
        self.counts += other.counts.to(self.counts.device)

    def top_tokens(self, k: int = 20) -> tuple[Tensor, Tensor, Tensor]:
        """(token ids, mean activations, counts), each [N, k'] on the CPU, rank order; -1 ids pad
        neurons when fewer than k tokens reach min_count (k' = min(k, n_eligible))."""
        n = len(self.token_ids)
        if self.sums is None or n == 0:
            empty = torch.empty((self.n_neurons, 0))
            return empty.long(), empty, empty.long()
        counts = self.counts[:n]
        means = self.sums[:, :n] / counts.clamp(min=1).to(self.dtype)[None, :]  # [N, n]
        scores = means.masked_fill((counts < self.min_count)[None, :], float("-inf"))  # [N, n]
        values, slots = tile_topk(scores.contiguous(), k, largest=True, dim=1)  # ties: lower slot = lower id
        valid = torch.isfinite(values)
        ids = torch.where(valid, self.token_ids.to(slots.device)[slots], -1)
        return ids.cpu(), values.cpu(), torch.where(valid, counts[slots], 0).cpu()

    def rows(
        self, model: str, corpus: str, gelu_variant: str, layer: int, tokenizer, k: int = 20,
        strings: TokenStrings | None = None,
    ) -> pa.Table:
        """`token_activation_summary` rows: per neuron the k eligible tokens with count >= min_count and
        the highest mean activation (rank 0 = highest; equal means -> lower token id first)."""
        ids, means, counts = self.top_tokens(k)
        n, kk = ids.shape
        keep = (ids >= 0).numpy().reshape(-1)
        ids_np = ids.numpy().reshape(-1)[keep]
        count = len(ids_np)
        strings = strings or TokenStrings(tokenizer)
        return pa.table({
            "model": pa.repeat(pa.scalar(model), count),
            "corpus": pa.repeat(pa.scalar(corpus), count),
            "gelu_variant": pa.repeat(pa.scalar(gelu_variant), count),
            "layer": pa.repeat(pa.scalar(layer), count),
            "neuron": np.repeat(np.arange(n, dtype=np.int32), kk)[keep],
            "rank": np.tile(np.arange(kk, dtype=np.int32), n)[keep],
            "token_id": ids_np.astype(np.int32),
            "token": strings.column(ids_np),
            "mean_activation": means.numpy().reshape(-1)[keep].astype(np.float32),
            "count": counts.numpy().reshape(-1)[keep].astype(np.int64),
        }, schema=SUMMARY_SCHEMA)
