"""Streaming mean, variance, skewness and kurtosis of every neuron over all token activations.

Power sums of (x − shift) are accumulated in float64, with the shift set to the first batch's mean so
cancellation stays small. Conventions (as numpy/scipy defaults): population variance (ddof=0),
skewness g1, excess (Fisher) kurtosis g2 = m4/m2² − 3.
"""

from __future__ import annotations

import logging

import torch

from nx_dagster import settings

log = logging.getLogger(__name__)
_COMPILED: dict[str, object] = {}


def power_sums(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x [N, M], shift [N] -> [4, N] float32: sums over M of (x − shift)^p for p = 1..4."""
    y = x.float() - shift[:, None]
    y2 = y * y
    return torch.stack([y.sum(1), y2.sum(1), (y2 * y).sum(1), (y2 * y2).sum(1)])


def fused_power_sums(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`power_sums` compiled by torch.compile into one kernel that reads x once (eager it is a dozen
    passes over the layer's activations: on a GPU as long as the layer's forward). Falls back to
    eager, with a warning, where compilation fails; NX_COMPILE=0 turns it off."""
    fn = _COMPILED.get("fn")
    if fn is None:
        fn = power_sums if not settings.current().nx_compile else torch.compile(power_sums, dynamic=False)
        _COMPILED["fn"] = fn
    if fn is power_sums:
        return power_sums(x, shift)
    try:
        return fn(x, shift)
    except Exception as e:  # e.g. no Triton or no C compiler: the eager ops give the same sums
        log.warning("torch.compile of the moment sums failed (%s: %s); using eager ops", type(e).__name__, e)
        _COMPILED["fn"] = power_sums
        return power_sums(x, shift)


class Moments:
    CHUNK = 256  # tokens per step on the CPU

    def __init__(self, n_neurons: int, device):
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.sums = torch.zeros((4, n_neurons), dtype=torch.float64, device=device)
        self.max = torch.full((n_neurons,), float("-inf"), dtype=torch.float64, device=device)

    def update(self, post: torch.Tensor, seq_max: torch.Tensor) -> None:
        """post [B, T, N] activations (any memory layout), seq_max [B, N] the per-sequence maxima."""
        nbt = post.permute(2, 0, 1)
        if nbt.is_contiguous():  # neuron-major: each neuron's tokens are one contiguous row
            self._update_rows(nbt.reshape(nbt.shape[0], -1))
        else:
            self._update_columns(post.reshape(-1, post.shape[-1]).float())
        self.n += post.shape[0] * post.shape[1]
        self.max = torch.maximum(self.max, seq_max.amax(dim=0).double())

    def _update_rows(self, x: torch.Tensor) -> None:
        """x [N, tokens] (any float dtype): on a GPU one fused reduction; on the CPU row sums as
        matrix-vector products, a few hundred neurons at a time."""
        if self.shift is None:
            self.shift = x.mean(dim=1, dtype=torch.float32)
        if x.device.type != "cpu":
            self.sums += fused_power_sums(x, self.shift).double()
            return
        x = x.float()
        ones = torch.ones((x.shape[1], 1), dtype=x.dtype, device=x.device)
        chunk = max(1, (1 << 20) // x.shape[1])
        for lo in range(0, x.shape[0], chunk):
            y = x[lo:lo + chunk] - self.shift[lo:lo + chunk, None]
            y2 = y * y
            sl = slice(lo, lo + y.shape[0])
            self.sums[0, sl] += (y @ ones)[:, 0].double()
            self.sums[1, sl] += (y2 @ ones)[:, 0].double()
            self.sums[2, sl] += (y.mul_(y2) @ ones)[:, 0].double()
            self.sums[3, sl] += (y2.square_() @ ones)[:, 0].double()

    def _update_columns(self, x: torch.Tensor) -> None:
        """x [tokens, N]."""
        if self.shift is None:
            self.shift = x.mean(dim=0)
        # Column sums as matrix-vector products (BLAS; float32 within a chunk, float64 across chunks),
        # over chunks of tokens small enough that the temporaries stay in cache.
        chunk = self.CHUNK if x.device.type == "cpu" else x.shape[0]
        for start in range(0, x.shape[0], chunk):
            y = x[start:start + chunk] - self.shift
            y2 = y * y
            ones = torch.ones((1, y.shape[0]), dtype=y.dtype, device=y.device)
            self.sums[0] += (ones @ y)[0].double()
            self.sums[1] += (ones @ y2)[0].double()
            self.sums[2] += (ones @ y.mul_(y2))[0].double()
            self.sums[3] += (ones @ y2.square_())[0].double()

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
