"""The recorder's per-batch work on a GPU: two Triton kernels per layer (`triton_kernels.py`), no host
synchronization, so batches queue back to back; on the CPU the same kernels run in Triton's
interpreter (how the tests hold them to the other paths).

`load()` imports the kernels once, when the Triton path is first considered (`usable`, `update`).
Torch's CUDA wheels ship Triton; `pip install triton` adds it for the CPU tests.
"""

from __future__ import annotations

import logging
import os
import sys

import torch

from nx_dagster.activations.layer_state import LayerState, toy
from nx_dagster.activations.sketch import EDGES, N_BUCKETS, bucket_guesses
from nx_dagster.vocab import N_QUANTILE_BINS

log = logging.getLogger(__name__)
_STATE: dict[str, object] = {}
_CONSTANTS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def load():
    """The kernel module, or None (with the reason logged once) where Triton cannot run them."""
    if "module" not in _STATE:
        if "triton" not in sys.modules and not torch.backends.cuda.is_built():
            # A CPU-only torch: compiled Triton cannot run, so ask for its interpreter. Triton reads
            # TRITON_INTERPRET once, at its own import, so this is set in the process environment just
            # before the kernels import it, and only then; where Triton was imported earlier without
            # it, `usable()` says the kernels cannot run on the CPU. (`is_built` is a build-time check:
            # no CUDA driver call, which would spoil forked worker processes.)
            os.environ.setdefault("TRITON_INTERPRET", "1")
        try:
            from nx_dagster.activations import triton_kernels

            _STATE["module"] = triton_kernels
        except ImportError as e:
            log.info("Triton is not importable (%s): the recorder uses torch ops on a GPU", e)
            _STATE["module"] = None
    return _STATE["module"]


def interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter (CPU tensors) rather than compiled (CUDA)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


def usable(device: torch.device) -> bool:
    """Whether the Triton path can run on `device`: CUDA with compiled kernels, or the CPU with the
    interpreter. Checked once per device on a toy batch (a GPU whose Triton cannot compile them falls
    back to torch ops, with a warning, before any real data is touched)."""
    device = torch.device(device)
    key = f"usable:{device}"
    if key not in _STATE:
        ok = load() is not None and (device.type == "cuda") != interpreted()
        if ok:
            try:
                _smoke(device)
            except Exception as e:  # e.g. a GPU or driver this Triton cannot compile for
                log.warning("Triton recorder kernels failed on %s (%s: %s); using torch ops", device,
                            type(e).__name__, e)
                ok = False
        _STATE[key] = ok
    return bool(_STATE[key])


def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The sketch's bucket edges (float64) and the bucket guess of every float32 top-16-bit pattern."""
    if device not in _CONSTANTS:
        _CONSTANTS[device] = (EDGES.to(device), bucket_guesses().to(device))
    return _CONSTANTS[device]


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def update(rec: LayerState, seq_ids: torch.Tensor, nbt: torch.Tensor, refresh: bool) -> None:
    """Apply one batch to the layer's state `rec`: seq_ids [B] int64 and nbt [N, B, T] (contiguous, any
    float dtype) on the recorder's device. Two kernel launches per layer (and the sketch's boundaries
    on refresh batches: a few torch ops), nothing read back to the host."""
    if nbt.is_cuda and nbt.device != torch.device("cuda", torch.cuda.current_device()):
        with torch.cuda.device(nbt.device):  # Triton launches on the current device
            return update(rec, seq_ids, nbt, refresh)
    k = load()
    n, b, t = nbt.shape
    mom, sk = rec.moments, rec.sketch
    if mom.shift is None:
        mom.shift = nbt.reshape(n, -1).mean(dim=1, dtype=torch.float32)
    edges, guess = _constants(nbt.device)
    seq_max = torch.empty((n, b), dtype=torch.float32, device=nbt.device)
    block_t = _next_pow2(t)
    block_rows = min(_next_pow2(b), max(1, 2048 // block_t))  # ~2k elements of a neuron per step
    k.layer_stats[(n,)](nbt, mom.shift, mom.sums, mom.max, sk.counts, seq_max, edges, guess, b, t, N_BUCKETS,
                        BLOCK_B=block_rows, BLOCK_T=block_t)
    if refresh or rec.boundaries is None:
        rec.boundaries = sk.boundaries()
    stores = (rec.top, rec.random, rec.bins)
    k.merge[(n,)](nbt, seq_max, seq_ids, rec.salt, rec.boundaries, b, t,
                  rec.top.keys, rec.top.acts, rec.top.floor, rec.top.k,
                  rec.random.keys, rec.random.acts, rec.random.floor, rec.random.k,
                  rec.bins.keys, rec.bins.acts, rec.bins.floor, rec.bins.k,
                  BLOCK_B=_next_pow2(b), BLOCK_T=block_t, BLOCK_K=_next_pow2(max(s.k for s in stores)),
                  N_BINS=N_QUANTILE_BINS)
    mom.n += b * t


def _smoke(device: torch.device) -> None:
    """Run both kernels once on a toy batch (compiles them; raises where they cannot run)."""
    rec = toy(device)
    update(rec, torch.arange(3, device=device), torch.rand(2, 3, 4, device=device), refresh=True)
    if int(rec.top.keys.min()) < 0:
        raise RuntimeError("the toy batch left an empty top slot")
