"""Streaming mean, variance, skewness and kurtosis of every neuron over all token activations.

Power sums of (x − shift) are accumulated in float64, with the shift set to the first batch's mean so
cancellation stays small. Conventions (as numpy/scipy defaults): population variance (ddof=0),
skewness g1, excess (Fisher) kurtosis g2 = m4/m2² − 3.
"""

from __future__ import annotations

import torch


class Moments:
    def __init__(self, n_neurons: int, device):
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.sums = torch.zeros((4, n_neurons), dtype=torch.float64, device=device)
        self.max = torch.full((n_neurons,), float("-inf"), dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor, seq_max: torch.Tensor) -> None:
        """x [tokens, N] activations, seq_max [B, N] the batch's per-sequence maxima."""
        x = x.float()
        if self.shift is None:
            self.shift = x.mean(dim=0)
        y = x - self.shift
        y2 = y * y
        # Column sums as matrix-vector products (BLAS, float32 within a batch, float64 across batches):
        # several times faster than a float64 reduction over the token axis.
        ones = torch.ones((1, x.shape[0]), dtype=x.dtype, device=x.device)
        for i, term in enumerate((y, y2, y2 * y, y2 * y2)):
            self.sums[i] += (ones @ term)[0].double()
        self.n += x.shape[0]
        self.max = torch.maximum(self.max, seq_max.amax(dim=0).double())

    def result(self) -> dict[str, torch.Tensor]:
        n = self.n
        s1, s2, s3, s4 = (s / n for s in self.sums)
        d = s1  # mean of y; central moments of x equal those of y
        m2 = s2 - d * d
        m3 = s3 - 3 * d * s2 + 2 * d**3
        m4 = s4 - 4 * d * s3 + 6 * d * d * s2 - 3 * d**4
        m2c = m2.clamp_min(0)
        with torch.no_grad():
            skew = torch.where(m2c > 0, m3 / m2c.pow(1.5), torch.full_like(m2, float("nan")))
            kurt = torch.where(m2c > 0, m4 / (m2c * m2c) - 3.0, torch.full_like(m2, float("nan")))
        return {"mean": self.shift.double() + d, "variance": m2c, "skewness": skew, "kurtosis": kurt, "max": self.max}
