"""What the GELU fix changed: |post_fix − pre_fix| over every post-MLP activation, on the same tokens.

Both variants run the whole model, so differences compound through the layers exactly as they did in
the published data; the activations compared are those the recorder sees (the same neuron-major
forward passes, so a recording pass computes the fix impact on the side: `passes.record_pass`; alone:
`passes.fix_impact`).

The distribution is kept in a histogram whose buckets are read off the float32 bits of each
difference (as in HdrHistogram): for a non-negative float the bits, read as an integer, grow with the
value, and dropping the low 13 of the 23 mantissa bits leaves 2^10 buckets per power of two, each
at most 2^-10 (0.098%) of its lower edge wide. No logarithm is computed, so every bucket edge is an
exact float32 and every path (CPU, GPU) puts a value in the same bucket. Memory is fixed whatever the
corpus; `max`, `mean` and `n` are exact.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch

D_MIN, D_MAX = 1e-9, 1e3  # bucket 0 holds differences below D_MIN's bucket; the last one D_MAX and above
SHIFT = 13  # mantissa bits dropped: 23 - 13 = 10 bits kept, relative bucket width <= 2^-10


def _bits(x: float) -> int:
    return int(np.float32(x).view(np.int32))


LO = _bits(D_MIN) >> SHIFT  # bucket 1 starts at the float whose bits are LO << SHIFT
N_BUCKETS = (_bits(D_MAX) >> SHIFT) - LO + 2
QUANTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}


def upper_edge(bucket: int) -> float:
    """The smallest float32 above every value of `bucket` (>= 1): the next bucket's lower edge."""
    return float(np.int32((bucket + LO) << SHIFT).view(np.float32))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """Every element once, in memory order where `t` is a permuted dense tensor (the neuron-major
    activations are): no copy. Order does not matter to a histogram."""
    if not t.is_contiguous():
        t = t.permute(sorted(range(t.dim()), key=lambda i: -t.stride(i)))
    return t.reshape(-1)


class DiffHistogram:
    """Per layer: counts [n_layer, N_BUCKETS] int64, max and sum [n_layer] float64, on the model's device.
    `update` adds one batch without waiting for the device (no host sync)."""

    def __init__(self, n_layer: int, device):
        self.counts = torch.zeros((n_layer, N_BUCKETS), dtype=torch.int64, device=device)
        self.max = torch.zeros(n_layer, dtype=torch.float64, device=device)
        self.sum = torch.zeros(n_layer, dtype=torch.float64, device=device)
        self._one = torch.ones(1, dtype=torch.int64, device=device)

    def update(self, layer: int, diff: torch.Tensor, scratch: bool = False) -> None:
        """diff: |post_fix − pre_fix| of one layer, any shape, >= 0 (float32, bfloat16 or float16).
        With `scratch` a float32 `diff` is overwritten (its buckets are computed in place)."""
        d = _flat(diff.float())
        torch.maximum(self.max[layer], d.max().double(), out=self.max[layer])
        self.sum[layer] += d.sum(dtype=torch.float64)
        bits = d.view(torch.int32) if scratch and d.data_ptr() == diff.data_ptr() else d.view(torch.int32).clone()
        bucket = bits.bitwise_right_shift_(SHIFT).sub_(LO - 1).clamp_(0, N_BUCKETS - 1)  # NaN: the last bucket
        # an on-device scatter-add (bincount would size its output from the data: a host sync on a GPU)
        self.counts[layer].index_add_(0, bucket, self._one.expand(len(bucket)))

    def update_pair(self, layer: int, pre: torch.Tensor, post: torch.Tensor) -> None:
        """Add |post − pre| of one layer (same shape), computed in `pre`'s memory, which is overwritten."""
        self.update(layer, pre.sub_(post).abs_() if pre.dtype == torch.float32 else (post.float() - pre.float()).abs(),
                    scratch=True)

    @staticmethod
    def _quantile(counts: np.ndarray, q: float, exact_max: float) -> float:
        """The upper edge of the bucket holding the q-quantile, but never above the exact maximum
        (the top bucket's edge can lie past it; the true quantile cannot)."""
        cum = np.cumsum(counts)
        bucket = int(np.searchsorted(cum, max(1, math.ceil(q * cum[-1]))))
        return 0.0 if bucket == 0 else min(upper_edge(bucket), float(exact_max))

    def rows(self, model: str, corpus: str) -> pa.Table:
        counts, mx, sm = self.counts.cpu().numpy(), self.max.cpu().numpy(), self.sum.cpu().numpy()
        out: dict[str, list] = {k: [] for k in ("layer", "n", "median", "p90", "p99", "p999", "max", "mean")}
        layers = [(i, counts[i], mx[i], sm[i]) for i in range(len(counts))]
        layers.append((None, counts.sum(0), mx.max(), sm.sum()))
        for layer, c, m, s in layers:
            n = int(c.sum())
            out["layer"].append(layer)
            out["n"].append(n)
            for name, q in QUANTILES.items():
                out[name].append(self._quantile(c, q, m))
            out["max"].append(float(min(m, D_MAX)))
            out["mean"].append(float(s / n))
        nrows = len(out["layer"])
        return pa.table({"model": [model] * nrows, "corpus": [corpus] * nrows,
                         "layer": pa.array(out.pop("layer"), pa.int32()), **out})
