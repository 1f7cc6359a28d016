"""Per-neuron exact top-k by integer key, with the activations of the chosen sequences.

Memory is [neurons, k, seq_len] whatever the corpus size. Each batch costs one comparison over
[batch, neurons] keys; only neurons with a new winner take a `topk`, and only winners are copied.
"""

from __future__ import annotations

import torch

EMPTY = -1  # real keys are >= 0


class Activations:
    """One batch of one layer's activations [B, T, N], with a gather of (sequence, neuron) rows.

    When the forward pass computed them neuron-major (GPT2.forward(neuron_major=True)), the view
    [N, B, T] is contiguous and every row is a contiguous read. Otherwise rows are strided reads, or,
    when many rows are wanted (the first batches), one transposed copy shared by every store."""

    def __init__(self, post: torch.Tensor):
        self.post = post
        nbt = post.permute(2, 0, 1)
        self._by_neuron: torch.Tensor | None = nbt if nbt.is_contiguous() else None

    def rows(self, b: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """[W, T]: the activations of sequence b[i] for neuron n[i]."""
        if self._by_neuron is None and len(b) * 16 > self.post.shape[0] * self.post.shape[2]:
            self._by_neuron = self.post.permute(2, 0, 1).contiguous()  # [N, B, T]
        if self._by_neuron is not None:
            return self._by_neuron[n, b]
        return self.post[b, :, n]


class TopKStore:
    def __init__(self, n_neurons: int, k: int, seq_len: int, device, dtype=torch.float32):
        self.k = k
        self.keys = torch.full((n_neurons, k), EMPTY, dtype=torch.int64, device=device)
        self.acts = torch.empty((n_neurons, k, seq_len), dtype=dtype, device=device)  # valid where keys != EMPTY
        self.floor = torch.full((n_neurons,), EMPTY, dtype=torch.int64, device=device)  # = keys.min(1)

    def update(self, batch_keys: torch.Tensor, post: "Activations", period: int | None = None) -> None:
        """batch_keys [B, N] int64 (EMPTY = not a candidate); post: the batch's activations [B, T, N'].

        With `period`, store row r holds neuron r % period (several stores side by side, N = m·N')."""
        better = batch_keys > self.floor[None, :]
        cols = better.any(dim=0).nonzero().squeeze(1)  # neurons with at least one candidate
        if cols.numel() == 0:
            return
        k = self.k
        pool = torch.cat([self.keys[cols], batch_keys[:, cols].T], dim=1)  # [n', k + B]
        chosen = torch.zeros_like(pool, dtype=torch.bool).scatter_(1, pool.topk(k, dim=1).indices, True)
        # Evicted old slots and winning batch rows come out of nonzero() grouped by neuron, in equal
        # numbers per neuron, so the i-th winner takes the i-th evicted slot.
        ev_row, ev_slot = (~chosen[:, :k]).nonzero(as_tuple=True)
        win_row, win_b = chosen[:, k:].nonzero(as_tuple=True)
        if ev_row.numel() == 0:
            return
        neuron = cols[ev_row]
        self.keys[neuron, ev_slot] = batch_keys[win_b, cols[win_row]]
        self.floor[cols] = self.keys[cols].min(dim=1).values
        src = cols[win_row] if period is None else cols[win_row] % period
        self.acts[neuron, ev_slot] = post.rows(win_b, src).to(self.acts.dtype)

    def sorted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys [N, k], acts [N, k, T]) in descending key order (rank 0 first); EMPTY slots last."""
        order = self.keys.argsort(dim=1, descending=True)
        return self.keys.gather(1, order), self.acts[torch.arange(len(order), device=order.device)[:, None], order]
