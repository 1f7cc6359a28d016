"""What recording one layer keeps between batches: the state every update path changes in place.

The torch ops (`recorder.LayerRecorder`), the fused CPU kernel (`cpu_kernel`) and the Triton kernels
(`gpu_update`) all update this same state and leave it the same. It sits below all three, so the
kernels (and their warm-up on a toy batch) need nothing from the recorder.
"""

from __future__ import annotations

import torch

from nx_dagster.activations.keys import neuron_salt
from nx_dagster.activations.moments import Moments
from nx_dagster.activations.sketch import MaxSketch
from nx_dagster.activations.store import TopKStore
from nx_dagster.vocab import N_QUANTILE_BINS


class LayerState:
    """Stores (top, random, the five quantile bins side by side), the sketch of per-sequence maxima, the
    moments, the current quantile boundaries and each neuron's hash salt, for a contiguous range of
    `neurons` of `layer`, on `device`."""

    def __init__(self, layer: int, neurons: torch.Tensor, seq_len: int, top_k: int, random_k: int, quantile_k: int,
                 seed: int, device):
        n = len(neurons)
        self.layer, self.neurons = layer, neurons.to(device)
        self.lo, self.hi = int(neurons[0]), int(neurons[-1]) + 1
        if self.hi - self.lo != n:
            raise ValueError("neurons must be a contiguous range")
        self.top = TopKStore(n, top_k, seq_len, device)
        self.random = TopKStore(n, random_k, seq_len, device)
        # One store for the five bins side by side (row b·N + n = bin b of neuron n), with twice the quota
        # per bin: candidates binned against the running estimate may move bins at the end.
        self.bins = TopKStore(N_QUANTILE_BINS * n, 2 * quantile_k, seq_len, device)
        self.sketch = MaxSketch(n, device)
        self.moments = Moments(n, device)
        self.salt = neuron_salt(seed, layer, self.neurons)
        self.boundaries: torch.Tensor | None = None


def toy(device) -> LayerState:
    """A state of two neurons, k = 1, sequences of 4 tokens: what the kernels' warm-ups run on."""
    return LayerState(0, torch.arange(2), 4, top_k=1, random_k=1, quantile_k=1, seed=0, device=device)
