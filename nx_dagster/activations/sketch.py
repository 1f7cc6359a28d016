"""Streaming quantiles of each neuron's per-sequence maximum, in memory independent of the corpus.

A log-bucketed histogram per neuron (DDSketch-style): a value v with |v| > V_MIN falls in bucket
sign(v)·(1 + floor(log(|v|/V_MIN)/log(GAMMA))); |v| <= V_MIN falls in the zero bucket. A quantile is
reported as its bucket's upper edge, so it is within a relative GAMMA - 1 (1%) of the exact quantile,
and bin membership against the reported boundaries is exact.
"""

from __future__ import annotations

import math

import torch

GAMMA = 1.01
V_MIN = 1e-4
V_MAX = 1e4
HALF = int(math.ceil(math.log(V_MAX / V_MIN) / math.log(GAMMA)))  # buckets per sign
N_BUCKETS = 2 * HALF + 1
QUANTILES = (0.5, 0.9, 0.99, 0.999)


def bucket_of(values: torch.Tensor) -> torch.Tensor:
    v = values.float()
    mag = torch.log(v.abs().clamp_min(V_MIN) / V_MIN) / math.log(GAMMA)
    idx = torch.where(v.abs() > V_MIN, torch.floor(mag).long().clamp(0, HALF - 1) + 1, torch.zeros_like(mag, dtype=torch.long))
    return HALF + torch.sign(v).long() * idx


def upper_edge(bucket: torch.Tensor) -> torch.Tensor:
    """The largest value of each bucket (float64)."""
    rel = bucket - HALF
    mag = V_MIN * torch.pow(torch.tensor(GAMMA, dtype=torch.float64, device=bucket.device), rel.abs().double())
    return torch.where(rel > 0, mag, torch.where(rel < 0, -V_MIN * torch.pow(
        torch.tensor(GAMMA, dtype=torch.float64, device=bucket.device), (rel.abs() - 1).double()), torch.full_like(mag, V_MIN)))


class MaxSketch:
    def __init__(self, n_neurons: int, device):
        self.counts = torch.zeros((n_neurons, N_BUCKETS), dtype=torch.int32, device=device)
        self._flat_offset = torch.arange(n_neurons, device=device) * N_BUCKETS

    def update(self, seq_max: torch.Tensor) -> None:
        """seq_max [B, N]: the per-sequence maximum of each neuron."""
        flat = (bucket_of(seq_max) + self._flat_offset[None, :]).reshape(-1)
        self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=self.counts.dtype))

    def boundaries(self, quantiles=QUANTILES) -> torch.Tensor:
        """[N, len(quantiles)] float64 quantile boundaries (bucket upper edges)."""
        cum = self.counts.cumsum(dim=1)
        total = cum[:, -1:].double()
        q = torch.tensor(quantiles, dtype=torch.float64, device=cum.device)
        target = torch.ceil(q[None, :] * total).clamp_min(1).long()  # rank of the quantile (1-based)
        bucket = torch.searchsorted(cum, target)
        return upper_edge(bucket.clamp(max=N_BUCKETS - 1))


def bin_of(values: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """values [..., N], boundaries [N, 4] -> bin 0..4 (bin j holds boundary[j-1] < v <= boundary[j])."""
    return (values.double()[..., None] > boundaries).sum(dim=-1)
