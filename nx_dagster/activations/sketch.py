"""Streaming quantiles of each neuron's per-sequence maximum, in memory independent of the corpus.

A log-bucketed histogram per neuron (DDSketch-style). Bucket i holds EDGES[i-1] < v <= EDGES[i]:
positive buckets have upper edges V_MIN·GAMMA^j up to V_MAX, the zero bucket (-V_MIN, V_MIN], and a
shorter negative side (both GELU variants are >= -0.17, so it stops near -NEG_MAX); the last bucket
is open-ended. The edges are one float64 table, so every implementation (torch here, the fused CPU
kernel in `cpu_kernel.py`) puts a value in the same bucket. A quantile is reported as its bucket's
upper edge: within a relative GAMMA - 1 (2%) of the exact quantile; bin membership is then decided
against the reported boundaries, so it is exact for them.
"""

from __future__ import annotations

import functools
import math

import torch

from nx_dagster.vocab import QUANTILE_BOUNDARIES

GAMMA = 1.02
V_MIN, V_MAX, NEG_MAX = 1e-3, 1e4, 0.25
_LOG_G = math.log(GAMMA)
POS = int(math.ceil(math.log(V_MAX / V_MIN) / _LOG_G))  # positive buckets
NEG = int(math.ceil(math.log(NEG_MAX / V_MIN) / _LOG_G))  # negative buckets
ZERO = NEG  # index of the zero bucket; negatives below, positives above
N_BUCKETS = NEG + 1 + POS


def _edges() -> torch.Tensor:
    rel = (torch.arange(N_BUCKETS) - ZERO).double()
    edge = torch.where(rel > 0, V_MIN * torch.exp(rel * _LOG_G), -V_MIN * torch.exp((-rel - 1) * _LOG_G))
    edge[ZERO] = V_MIN
    edge[-1] = math.inf
    return edge


EDGES = _edges()  # [N_BUCKETS] float64, strictly increasing: the upper edge of each bucket
_ON: dict[tuple, torch.Tensor] = {}


def _on(device: torch.device, name, make) -> torch.Tensor:
    """A constant tensor `make()` on `device`, copied there once (a host-to-GPU copy from pageable
    memory waits for the GPU's queue: once per batch it would stall the back-to-back batches)."""
    if (device, name) not in _ON:
        _ON[(device, name)] = make().to(device)
    return _ON[(device, name)]


def _edges_on(device: torch.device) -> torch.Tensor:
    return _on(device, "edges", lambda: EDGES)


def bucket_of(values: torch.Tensor) -> torch.Tensor:
    """The bucket of each value: the first i with v <= EDGES[i] (NaN goes to the last bucket)."""
    return torch.searchsorted(_edges_on(values.device), values.double().contiguous()).clamp_(max=N_BUCKETS - 1)


@functools.cache
def bucket_guesses() -> torch.Tensor:
    """[2^16] int32 on the CPU: the bucket of the float32 whose top 16 bits are i (low bits zero), where
    the kernels (`cpu_kernel`, `triton_kernels`) start looking for a value's bucket. Built on first use."""
    return bucket_of((torch.arange(1 << 16, dtype=torch.int32) << 16).view(torch.float32)).to(torch.int32)


def upper_edge(bucket: torch.Tensor) -> torch.Tensor:
    """The largest value of each bucket (float64); the top bucket is open-ended (+inf)."""
    return _edges_on(bucket.device)[bucket.clamp(0, N_BUCKETS - 1)]


class MaxSketch:
    def __init__(self, n_neurons: int, device):
        self.counts = torch.zeros((n_neurons, N_BUCKETS), dtype=torch.int32, device=device)
        self._flat_offset = torch.arange(n_neurons, device=device) * N_BUCKETS

    def update(self, seq_max: torch.Tensor) -> None:
        """seq_max [B, N]: the per-sequence maximum of each neuron."""
        flat = (bucket_of(seq_max) + self._flat_offset[None, :]).reshape(-1)
        self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=self.counts.dtype))

    def boundaries(self, quantiles=QUANTILE_BOUNDARIES) -> torch.Tensor:
        """[N, len(quantiles)] float64 quantile boundaries (bucket upper edges)."""
        cum = self.counts.cumsum(dim=1, dtype=torch.int32)  # [N, buckets], rows non-decreasing
        total = cum[:, -1:].double()
        q = _on(cum.device, ("q", tuple(quantiles)), lambda: torch.tensor(quantiles, dtype=torch.float64))
        target = torch.ceil(q[None, :] * total).clamp_min(1).int()  # 1-based rank of each quantile
        bucket = torch.searchsorted(cum, target)  # first bucket whose running count reaches the rank
        return upper_edge(bucket.clamp(max=N_BUCKETS - 1))


def bin_of(values: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """values [..., N], boundaries [N, 4] -> bin 0..4 (bin j holds boundary[j-1] < v <= boundary[j])."""
    return (values.double()[..., None] > boundaries).sum(dim=-1)
