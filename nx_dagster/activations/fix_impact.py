"""What the GELU fix changed: |post_fix − pre_fix| over every post-MLP activation, on the same tokens.

Both variants run the whole model, so differences compound through the layers exactly as they did in
the published data. The distribution is kept in a log-bucketed histogram (relative resolution 0.1%),
so memory is fixed whatever the corpus; `max`, `mean` and `n` are exact.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pyarrow as pa
import torch

from nx_dagster.model.gpt2 import GPT2

D_MIN, D_MAX, GAMMA = 1e-9, 1e3, 1.001
N_BUCKETS = int(math.ceil(math.log(D_MAX / D_MIN) / math.log(GAMMA))) + 1
QUANTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}


class DiffHistogram:
    def __init__(self, n_layer: int, device):
        self.counts = torch.zeros((n_layer, N_BUCKETS), dtype=torch.int64, device=device)
        self.max = torch.zeros(n_layer, dtype=torch.float64, device=device)
        self.sum = torch.zeros(n_layer, dtype=torch.float64, device=device)

    def update(self, layer: int, diff: torch.Tensor) -> None:
        d = diff.float().reshape(-1)
        idx = torch.floor(torch.log(d.clamp_min(D_MIN) / D_MIN) / math.log(GAMMA)).long() + 1
        idx = torch.where(d <= D_MIN, 0, idx.clamp(1, N_BUCKETS - 1))
        self.counts[layer].index_add_(0, idx, torch.ones_like(idx))  # (bincount would sync with a GPU)
        self.max[layer] = torch.maximum(self.max[layer], d.max().double())
        self.sum[layer] += d.sum(dtype=torch.float64)

    @staticmethod
    def _quantile(counts: np.ndarray, q: float, exact_max: float) -> float:
        """The upper edge of the bucket holding the q-quantile, but never above the exact maximum
        (the top bucket's edge can lie past it; the true quantile cannot)."""
        cum = np.cumsum(counts)
        bucket = int(np.searchsorted(cum, max(1, math.ceil(q * cum[-1]))))
        return 0.0 if bucket == 0 else min(D_MIN * GAMMA**bucket, float(exact_max))

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


def fix_impact(model: GPT2, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> DiffHistogram:
    """Run pre_fix and post_fix on every batch and histogram the per-activation differences."""
    hist = DiffHistogram(model.config.n_layer, model.device)
    for _, token_ids in batches:
        token_ids = token_ids.to(model.device)
        pre: list[torch.Tensor] = []
        model(token_ids, "pre_fix", on_mlp=lambda i, a: pre.append(a.clone()), logits=False)
        model(token_ids, "post_fix", on_mlp=lambda i, a: hist.update(i, (a - pre[i]).abs()), logits=False)
    return hist
