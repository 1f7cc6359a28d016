"""One streaming pass over the corpus that records every selected neuron of every selected layer.

Per neuron: the exact top-k sequences by maximum activation, a uniform random sample (independent per
neuron), samples from the five bins of the per-sequence maximum (boundaries at its 0.5/0.9/0.99/0.999
quantiles), and the moments over all token activations. Memory depends on neurons × k × seq_len,
never on the number of sequences.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch

from nx_dagster.activations.keys import hash_key, key_seq_id, neuron_salt, rotate_key, value_key
from nx_dagster.activations.moments import Moments
from nx_dagster.activations.sketch import MaxSketch, bin_of
from nx_dagster.activations.store import EMPTY, Activations, TopKStore
from nx_dagster.model.gpt2 import GPT2

log = logging.getLogger(__name__)
N_BINS = 5
Batch = tuple[torch.Tensor, torch.Tensor]  # (sequence ids [B] int64, token ids [B, T] int64)


@dataclass(frozen=True)
class RecorderSettings:
    top_k: int = 20
    random_k: int = 20
    quantile_k: int = 5  # per bin
    seed: int = 0
    batch_size: int = 64

    @property
    def version(self) -> str:
        """Changes whenever the recorded tables would: part of the assets' code_version."""
        text = "recorder-v1:" + ",".join(f"{k}={v}" for k, v in sorted(asdict(self).items()) if k != "batch_size")
        return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass
class LayerRecord:
    """Everything recorded for one layer; tensors are on the CPU, rows in neuron order."""

    layer: int
    neurons: torch.Tensor  # [N] neuron indices
    top: tuple[torch.Tensor, torch.Tensor]  # (sequence ids [N, k], activations [N, k, T]) rank order
    random: tuple[torch.Tensor, torch.Tensor]
    quantile: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (bins [N, M], seq ids [N, M], acts [N, M, T])
    stats: dict[str, torch.Tensor]  # mean, variance, skewness, kurtosis, max: [N]; boundaries [N, 4]
    n_tokens: int


class LayerRecorder:
    _REFRESH = {0, 1, 2, 4, 8, 16}

    def __init__(self, layer: int, neurons: torch.Tensor, seq_len: int, s: RecorderSettings, device):
        n = len(neurons)
        self.layer, self.neurons, self.s = layer, neurons.to(device), s
        self.lo, self.hi = int(neurons[0]), int(neurons[-1]) + 1
        if self.hi - self.lo != n:
            raise ValueError("neurons must be a contiguous range")
        self.top = TopKStore(n, s.top_k, seq_len, device)
        self.random = TopKStore(n, s.random_k, seq_len, device)
        # One store for the five bins side by side (row b·N + n = bin b of neuron n), with twice the quota
        # per bin: candidates binned against the running estimate may move bins at the end.
        self.bins = TopKStore(N_BINS * n, 2 * s.quantile_k, seq_len, device)
        self._bin_ids = torch.arange(N_BINS, device=device)
        self.sketch = MaxSketch(n, device)
        self.moments = Moments(n, device)
        self.batches = 0
        self._salt = neuron_salt(s.seed, layer, self.neurons)
        self.boundaries: torch.Tensor | None = None

    def update(self, seq_ids: torch.Tensor, post: torch.Tensor) -> None:
        post = post[:, :, self.lo:self.hi]
        seq_max = post.amax(dim=1)  # [B, N] (a contiguous reduction when post is neuron-major)
        acts = Activations(post)
        self.top.update(value_key(seq_max, seq_ids), acts)
        rkey = hash_key(self.s.seed, self.layer, self.neurons, seq_ids, salt=self._salt)
        self.random.update(rkey, acts)
        self.sketch.update(seq_max)
        if self.batches in self._REFRESH or self.batches % 32 == 0:
            self.boundaries = self.sketch.boundaries()
        self._update_bins(bin_of(seq_max, self.boundaries), rotate_key(rkey), acts)
        self.moments.update(post, seq_max)
        self.batches += 1

    def _update_bins(self, bins: torch.Tensor, key: torch.Tensor, acts: Activations) -> None:
        """bins, key [B, N]: each sequence is a candidate only in its own bin's store row (b·N + n).
        Only neurons where some sequence beats its bin's floor take the (5-row) dense update."""
        n = key.shape[1]
        floors = self.bins.floor.view(N_BINS, n).gather(0, bins)  # [B, N] floor of each one's bin
        cols = (key > floors).any(dim=0).nonzero().squeeze(1)
        if cols.numel() == 0:
            return
        b_ids = self._bin_ids.view(1, 1, N_BINS)
        keys = torch.where(bins[:, cols, None] == b_ids, key[:, cols, None], EMPTY)  # [B, n', 5]
        rows = (b_ids.view(1, N_BINS) * n + cols[:, None]).reshape(-1)  # store rows, same order
        self.bins.update(keys.reshape(len(key), -1), acts, rows=rows, src=cols.repeat_interleave(N_BINS))

    def finish(self) -> LayerRecord:
        top_keys, top_acts = self.top.sorted()
        rnd_keys, rnd_acts = self.random.sorted()
        boundaries = self.sketch.boundaries()
        # Quantile samples were binned against the running boundary estimate; re-bin all candidates
        # against the final boundaries and keep, per final bin, the quantile_k with the highest hash.
        n = len(self.neurons)
        keys = self.bins.keys.view(N_BINS, n, -1).permute(1, 0, 2).reshape(n, -1)  # [N, 5·2k]
        acts = self.bins.acts.view(N_BINS, n, -1, self.bins.acts.shape[-1]).permute(1, 0, 2, 3).reshape(n, keys.shape[1], -1)
        final_bin = bin_of(acts.amax(dim=2).T, boundaries).T  # [N, 5k]
        picked_bins, picked_keys, picked_acts = [], [], []
        rows = torch.arange(len(keys), device=keys.device)[:, None]
        for b in range(N_BINS):
            masked = torch.where((final_bin == b) & (keys != EMPTY), keys, EMPTY)
            kb, order = masked.topk(min(self.s.quantile_k, masked.shape[1]), dim=1)
            picked_keys.append(kb)
            picked_acts.append(acts[rows, order])
            picked_bins.append(torch.where(kb != EMPTY, b, -1))
        stats = self.moments.result()
        stats["boundaries"] = boundaries
        cpu = lambda t: t.cpu()  # noqa: E731
        return LayerRecord(
            layer=self.layer, neurons=cpu(self.neurons),
            top=(cpu(torch.where(top_keys != EMPTY, key_seq_id(top_keys), -1)), cpu(top_acts.float())),
            random=(cpu(torch.where(rnd_keys != EMPTY, key_seq_id(rnd_keys), -1)), cpu(rnd_acts.float())),
            quantile=(cpu(torch.cat(picked_bins, 1)),
                      cpu(torch.where(torch.cat(picked_keys, 1) != EMPTY, key_seq_id(torch.cat(picked_keys, 1)), -1)),
                      cpu(torch.cat(picked_acts, 1).float())),
            stats={k: cpu(v) for k, v in stats.items()}, n_tokens=self.moments.n,
        )


def record(
    model: GPT2, batches: Iterable[Batch], gelu_variant: str, layers: list[int], seq_len: int,
    settings: RecorderSettings = RecorderSettings(), neurons: range | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    extra: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[int, LayerRecord]:
    """Run the model once over `batches`, recording `layers` (and `neurons`, a contiguous range).

    `on_batch(batches_done, tokens_done)` reports progress; `extra(layer, token_ids, post)` lets other
    accumulators (e.g. the token summary) share the pass.
    """
    if not layers:
        return {}
    n_all = model.config.n_neurons
    rng = neurons or range(n_all)
    if rng.start < 0 or rng.stop > n_all or len(rng) == 0:
        raise ValueError(f"neurons {rng.start}-{rng.stop - 1} out of range 0-{n_all - 1}")
    idx = torch.arange(rng.start, rng.stop)
    recs = {layer: LayerRecorder(layer, idx, seq_len, settings, model.device) for layer in layers}
    state: dict[str, torch.Tensor] = {}

    def on_mlp(layer: int, post: torch.Tensor) -> None:
        rec = recs.get(layer)
        if rec is not None:
            rec.update(state["seq_ids"], post)
            if extra is not None:
                extra(layer, state["token_ids"], post)

    tokens_done = 0
    for i, (seq_ids, token_ids) in enumerate(batches):
        if int(seq_ids.max()) >= (1 << 31):
            raise ValueError("sequence ids must be below 2**31")
        state["seq_ids"] = seq_ids.to(model.device)
        state["token_ids"] = token_ids.to(model.device)
        model(state["token_ids"], gelu_variant, on_mlp=on_mlp, layers=max(layers) + 1, logits=False, neuron_major=True)
        tokens_done += token_ids.numel()
        if on_batch is not None:
            on_batch(i + 1, tokens_done)
    if tokens_done == 0:
        raise ValueError("no sequences to record")
    return {layer: rec.finish() for layer, rec in recs.items()}
