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

    def update(self, batch_keys: torch.Tensor, post: Activations, rows: torch.Tensor | None = None,
               src: torch.Tensor | None = None, dense: bool = False) -> None:
        """batch_keys [B, R] int64 (EMPTY = not a candidate) for store rows `rows` [R] (default: all
        rows), whose activations are column `src` [R] of the batch (default: the row itself).

        `dense` (all rows; what CUDA uses) merges every row whether or not it has a candidate: fixed
        shapes and no host sync, at the price of copying the whole store once per batch."""
        if dense:
            return self._update_dense(batch_keys, post, src)
        floor = self.floor if rows is None else self.floor[rows]
        better = batch_keys > floor[None, :]
        cols = better.any(dim=0).nonzero().squeeze(1)  # key columns with at least one candidate
        if cols.numel() == 0:
            return
        k = self.k
        store_rows = cols if rows is None else rows[cols]
        pool = torch.cat([self.keys[store_rows], batch_keys[:, cols].T], dim=1)  # [n', k + B]
        chosen = torch.zeros_like(pool, dtype=torch.bool).scatter_(1, pool.topk(k, dim=1).indices, True)
        # Evicted old slots and winning batch rows come out of nonzero() grouped by row, in equal
        # numbers per row, so the i-th winner takes the i-th evicted slot.
        ev_row, ev_slot = (~chosen[:, :k]).nonzero(as_tuple=True)
        win_row, win_b = chosen[:, k:].nonzero(as_tuple=True)
        if ev_row.numel() == 0:
            return
        target = store_rows[ev_row]
        self.keys[target, ev_slot] = batch_keys[win_b, cols[win_row]]
        self.floor[store_rows] = self.keys[store_rows].min(dim=1).values
        column = cols[win_row] if src is None else src[cols[win_row]]
        self.acts[target, ev_slot] = post.rows(win_b, column).to(self.acts.dtype)

    def _update_dense(self, batch_keys: torch.Tensor, post: Activations, src: torch.Tensor | None) -> None:
        k, n_rows = self.k, batch_keys.shape[1]
        pool = torch.cat([self.keys, batch_keys.T], dim=1)  # [R, k + B]
        keys, idx = pool.topk(k, dim=1)  # sorted: the floor is the last column
        old = idx < k
        kept = take_rows(self.acts, idx.clamp(max=k - 1))  # [R, k, T]
        column = torch.arange(n_rows, device=idx.device) if src is None else src
        fresh = post.rows((idx - k).clamp(min=0).reshape(-1), column.repeat_interleave(k)).view_as(kept)
        self.acts = torch.where(old[..., None], kept, fresh.to(self.acts.dtype))
        self.keys, self.floor = keys, keys[:, -1].clone()

    def sorted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys [N, k], acts [N, k, T]) in descending key order (rank 0 first); EMPTY slots last."""
        order = self.keys.argsort(dim=1, descending=True)
        return self.keys.gather(1, order), take_rows(self.acts, order)


def take_rows(acts: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """acts [R, k, T], slots [N, m] -> [N, m, T]: acts[rows[i, j], slots[i, j]] (rows default: i, with
    N = R), as one contiguous row copy each."""
    r, k, t = acts.shape
    if rows is None:
        rows = torch.arange(len(slots), device=slots.device)[:, None]
    flat = (rows * k + slots).reshape(-1)
    return acts.reshape(r * k, t).index_select(0, flat).view(*slots.shape, t)
