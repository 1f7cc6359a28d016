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

from nx_dagster import settings
from nx_dagster.activations import cpu_kernel, gpu_update
from nx_dagster.activations.keys import hash_key, key_seq_id, rotate_key, value_key
from nx_dagster.activations.layer_state import LayerState
from nx_dagster.activations.sketch import bin_of
from nx_dagster.activations.store import EMPTY, Activations, take_rows
from nx_dagster.activations.transfer import records_to_host, to_device
from nx_dagster.errors import NxInputError
from nx_dagster.model.gpt2 import GPT2
from nx_dagster.vocab import N_QUANTILE_BINS, RECORDER_VERSION

log = logging.getLogger(__name__)
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
        text = f"{RECORDER_VERSION}:" + ",".join(f"{k}={v}" for k, v in sorted(asdict(self).items()) if k != "batch_size")
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


def choose_path(device: torch.device) -> str:
    """How a layer applies each batch, chosen once: on the CPU the fused numba kernel ("fused"); on
    CUDA the Triton kernels ("triton"), or fixed-shape torch ops ("dense") where Triton cannot run;
    otherwise torch ops that update only the rows with a new candidate ("torch"). Every path keeps
    the same records. NX_RECORDER=torch|dense|triton picks one (triton on the CPU: its interpreter)."""
    env = settings.current().nx_recorder
    if env == "triton":
        if not gpu_update.usable(device):
            raise NxInputError("NX_RECORDER=triton", f"the Triton kernels cannot run on {device}",
                               "install triton (on a CPU-only torch it runs interpreted) or unset NX_RECORDER")
        return "triton"
    if device.type != "cpu":
        return "triton" if env not in ("torch", "dense") and gpu_update.usable(device) else "dense"
    if cpu_kernel.available():
        return "fused"
    return "dense" if env == "dense" else "torch"


class LayerRecorder(LayerState):
    """Applies each batch to the layer's state by the path `choose_path` picks, and gives the records."""

    _REFRESH = {0, 1, 2, 4, 8, 16}

    def __init__(self, layer: int, neurons: torch.Tensor, seq_len: int, s: RecorderSettings, device,
                 path: str | None = None):
        super().__init__(layer, neurons, seq_len, s.top_k, s.random_k, s.quantile_k, s.seed, device)
        self.s = s
        self._bin_ids = torch.arange(N_QUANTILE_BINS, device=device)
        # each bin row's column
        self._bin_src = torch.arange(N_QUANTILE_BINS * len(neurons), device=device) % len(neurons)
        self.batches = 0
        self._path = path or choose_path(torch.device(device))

    def update(self, seq_ids: torch.Tensor, post: torch.Tensor) -> None:
        post = post[:, :, self.lo:self.hi]
        refresh = self.batches in self._REFRESH or self.batches % 32 == 0
        nbt = post.permute(2, 0, 1)
        if self._path == "fused" and nbt.is_contiguous():
            cpu_kernel.update(self, seq_ids, nbt.float(), refresh)  # the same result, one fused pass
        elif self._path == "triton" and nbt.is_contiguous():
            gpu_update.update(self, seq_ids, nbt, refresh)  # the same result, two kernels
        else:
            self._update_torch(seq_ids, post, refresh, self._path != "torch")
        self.batches += 1

    def _update_torch(self, seq_ids: torch.Tensor, post: torch.Tensor, refresh: bool, dense: bool) -> None:
        seq_max = post.amax(dim=1)  # [B, N] (a contiguous reduction when post is neuron-major)
        acts = Activations(post)
        self.top.update(value_key(seq_max, seq_ids), acts, dense=dense)
        rkey = hash_key(self.s.seed, self.layer, self.neurons, seq_ids, salt=self.salt)
        self.random.update(rkey, acts, dense=dense)
        self.sketch.update(seq_max)
        if refresh:
            self.boundaries = self.sketch.boundaries()
        self._update_bins(bin_of(seq_max, self.boundaries), rotate_key(rkey), acts, dense)
        self.moments.update(post, seq_max)

    def _update_bins(self, bins: torch.Tensor, key: torch.Tensor, acts: Activations, dense: bool) -> None:
        """bins, key [B, N]: each sequence is a candidate only in its own bin's store row (b·N + n).
        Sparse: only neurons where some sequence beats its bin's floor take the (5-row) update.
        Dense: every row, with EMPTY where a sequence is not in that bin (no data-dependent shapes)."""
        n = key.shape[1]
        if dense:
            b_ids = self._bin_ids.view(1, N_QUANTILE_BINS, 1)
            keys = torch.where(bins[:, None, :] == b_ids, key[:, None, :], EMPTY)  # [B, 5, N]: row b·N + n
            self.bins.update(keys.reshape(len(key), -1), acts, src=self._bin_src, dense=True)
            return
        floors = self.bins.floor.view(N_QUANTILE_BINS, n).gather(0, bins)  # [B, N] floor of each one's bin
        cols = (key > floors).any(dim=0).nonzero().squeeze(1)
        if cols.numel() == 0:
            return
        b_ids = self._bin_ids.view(1, 1, N_QUANTILE_BINS)
        keys = torch.where(bins[:, cols, None] == b_ids, key[:, cols, None], EMPTY)  # [B, n', 5]
        rows = (b_ids.view(1, N_QUANTILE_BINS) * n + cols[:, None]).reshape(-1)  # store rows, same order
        self.bins.update(keys.reshape(len(key), -1), acts, rows=rows, src=cols.repeat_interleave(N_QUANTILE_BINS))

    def finish(self, host: bool = True) -> LayerRecord:
        """The layer's records: on the CPU, or (host=False) on the recorder's device."""
        top_keys, top_acts = self.top.sorted()
        rnd_keys, rnd_acts = self.random.sorted()
        # A boundary is its bucket's upper edge, never above the exact maximum (for every value seen,
        # v <= edge and v <= max are the same test there, so no bin changes).
        boundaries = torch.minimum(self.sketch.boundaries(), self.moments.max[:, None].to(torch.float64))
        # Quantile samples were binned against the running boundary estimate; re-bin all candidates
        # against the final boundaries and keep, per final bin, the quantile_k with the highest hash.
        # Only keys and per-candidate maxima are reshaped; activations are gathered for the picks.
        n, slots = len(self.neurons), self.bins.k
        keys = self.bins.keys.view(N_QUANTILE_BINS, n, slots).permute(1, 0, 2).reshape(n, N_QUANTILE_BINS * slots)
        cand_max = self.bins.acts.amax(dim=2).view(N_QUANTILE_BINS, n, slots).permute(1, 0, 2).reshape(n, -1)
        final_bin = bin_of(cand_max.T, boundaries).T  # [N, 5·2k]
        picked_bins, picked_keys, picked_slots = [], [], []
        for b in range(N_QUANTILE_BINS):
            masked = torch.where((final_bin == b) & (keys != EMPTY), keys, EMPTY)
            kb, order = masked.topk(min(self.s.quantile_k, masked.shape[1]), dim=1)
            picked_keys.append(kb)
            picked_slots.append(order)
            picked_bins.append(torch.where(kb != EMPTY, b, -1))
        slot = torch.cat(picked_slots, 1)  # [N, M] index into this neuron's 5·2k candidates
        store_row = (slot // slots) * n + torch.arange(n, device=slot.device)[:, None]  # bin b is rows b·N..
        picked_acts = take_rows(self.bins.acts, slot % slots, rows=store_row)
        stats = self.moments.result()
        stats["boundaries"] = boundaries

        def out(keys: torch.Tensor, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(sequence ids, activations) with -1 and zeros in empty slots: fully deterministic."""
            valid = keys != EMPTY
            seq = torch.where(valid, key_seq_id(keys), -1)
            return seq, acts.float().masked_fill_(~valid[..., None], 0.0)  # fresh from the gathers above

        rec = LayerRecord(
            layer=self.layer, neurons=self.neurons, top=out(top_keys, top_acts), random=out(rnd_keys, rnd_acts),
            quantile=(torch.cat(picked_bins, 1), *out(torch.cat(picked_keys, 1), picked_acts)),
            stats=stats, n_tokens=self.moments.n,
        )
        return records_to_host([rec])[0] if host else rec


class Recorder:
    """Records `layers` (and `neurons`, a contiguous range) of `model` batch by batch: `step` runs the
    forward pass over one batch, `finish` returns the records. `record` is the usual loop over it;
    the benchmark times `step` against the bare forward pass batch by batch."""

    def __init__(self, model: GPT2, gelu_variant: str, layers: list[int], seq_len: int,
                 settings: RecorderSettings = RecorderSettings(), neurons: range | None = None,
                 extra: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None):
        n_all = model.config.n_neurons
        rng = neurons or range(n_all)
        if rng.start < 0 or rng.stop > n_all or len(rng) == 0:
            raise ValueError(f"neurons {rng.start}-{rng.stop - 1} out of range 0-{n_all - 1}")
        if not layers:
            raise ValueError("no layers to record")
        idx = torch.arange(rng.start, rng.stop)
        self.model, self.variant, self.layers, self.extra = model, gelu_variant, sorted(layers), extra
        self.recs = {layer: LayerRecorder(layer, idx, seq_len, settings, model.device) for layer in self.layers}
        self.tokens = 0
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._also: Callable[[int, torch.Tensor], None] | None = None

    def _on_mlp(self, layer: int, post: torch.Tensor) -> None:
        seq_ids, token_ids = self._batch
        rec = self.recs.get(layer)
        if rec is not None:
            rec.update(seq_ids, post)
            if self.extra is not None:
                self.extra(layer, token_ids, post)
        if self._also is not None:
            self._also(layer, post)

    def step(self, seq_ids: torch.Tensor, token_ids: torch.Tensor, depth: int | None = None,
             also: Callable[[int, torch.Tensor], None] | None = None) -> None:
        """Run the forward pass over one batch: seq_ids [B] int64, token_ids [B, T] int64.

        `depth` runs that many blocks (default: up to the last recorded layer); `also(layer, post)`
        sees every block's post-GELU activations [B, T, n_inner] after the recorder, as another
        accumulator sharing the pass (the GELU fix impact)."""
        # checked on the host copy where there is one (on a GPU tensor the check waits for the GPU)
        if int(seq_ids.max()) >= (1 << 31):
            raise ValueError("sequence ids must be below 2**31")
        self._batch = (to_device(seq_ids, self.model.device), to_device(token_ids, self.model.device))
        self._also = also
        blocks = max(depth or 0, self.layers[-1] + 1)
        try:
            self.model(self._batch[1], self.variant, on_mlp=self._on_mlp, layers=blocks, logits=False,
                       neuron_major=True)
        finally:
            self._also = None
        self.tokens += token_ids.numel()

    def finish(self) -> dict[int, LayerRecord]:
        if self.tokens == 0:
            raise ValueError("no sequences to record")
        recs = records_to_host([rec.finish(host=False) for rec in self.recs.values()])
        return {r.layer: r for r in recs}


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
    rec = Recorder(model, gelu_variant, layers, seq_len, settings, neurons, extra)
    for i, (seq_ids, token_ids) in enumerate(batches):
        rec.step(seq_ids, token_ids)
        if on_batch is not None:
            on_batch(i + 1, rec.tokens)
    return rec.finish()
