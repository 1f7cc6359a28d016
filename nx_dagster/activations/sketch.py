"""Streaming quantiles of each neuron's per-sequence maximum, in memory independent of the corpus.

A log-bucketed histogram per neuron (DDSketch-style). Positive values v > V_MIN fall in bucket
ceil(log(v/V_MIN)/log(GAMMA)) of the positive side, up to V_MAX; |v| <= V_MIN in the zero bucket;
negative values on a shorter negative side (both GELU variants are >= -0.17, so it stops at -NEG_MAX).
A quantile is reported as its bucket's upper edge: within a relative GAMMA - 1 (2%) of the exact
quantile; bin membership is then decided against the reported boundaries, so it is exact for them.
"""

from __future__ import annotations

import math

import torch

GAMMA = 1.02
V_MIN, V_MAX, NEG_MAX = 1e-3, 1e4, 0.25
_LOG_G = math.log(GAMMA)
POS = int(math.ceil(math.log(V_MAX / V_MIN) / _LOG_G))  # positive buckets
NEG = int(math.ceil(math.log(NEG_MAX / V_MIN) / _LOG_G))  # negative buckets
ZERO = NEG  # index of the zero bucket; negatives below, positives above
N_BUCKETS = NEG + 1 + POS
QUANTILES = (0.5, 0.9, 0.99, 0.999)


def bucket_of(values: torch.Tensor) -> torch.Tensor:
    v = values.float()
    a = v.abs()
    j = torch.ceil(torch.log(a.clamp_min(V_MIN) / V_MIN) / _LOG_G).long()
    pos = ZERO + j.clamp(1, POS)
    neg = ZERO - j.clamp(1, NEG)
    return torch.where(a <= V_MIN, ZERO, torch.where(v > 0, pos, neg))


def upper_edge(bucket: torch.Tensor) -> torch.Tensor:
    """The largest value of each bucket (float64); the top bucket is open-ended (+inf)."""
    rel = (bucket - ZERO).double()
    edge = torch.where(rel > 0, V_MIN * torch.exp(rel * _LOG_G), -V_MIN * torch.exp((-rel - 1) * _LOG_G))
    edge = torch.where(rel == 0, torch.full_like(edge, V_MIN), edge)
    return torch.where(bucket >= N_BUCKETS - 1, torch.full_like(edge, math.inf), edge)


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
        cum = self.counts.cumsum(dim=1, dtype=torch.int32)  # [N, buckets], rows non-decreasing
        total = cum[:, -1:].double()
        q = torch.tensor(quantiles, dtype=torch.float64, device=cum.device)
        target = torch.ceil(q[None, :] * total).clamp_min(1).int()  # 1-based rank of each quantile
        bucket = torch.searchsorted(cum, target)  # first bucket whose running count reaches the rank
        return upper_edge(bucket.clamp(max=N_BUCKETS - 1))


def bin_of(values: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """values [..., N], boundaries [N, 4] -> bin 0..4 (bin j holds boundary[j-1] < v <= boundary[j])."""
    return (values.double()[..., None] > boundaries).sum(dim=-1)
