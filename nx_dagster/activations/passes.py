"""One pass over the corpus for every GELU variant a run needs: record each variant's layers and
compare the variants on the same tokens (the GELU fix impact) from the same forward passes.

Per batch each variant's forward pass runs once, pre_fix first. Its post-GELU activations feed its
recorders (and the token summary) and, when the fix impact is wanted, are held until post_fix reaches
the same layer, where |post_fix − pre_fix| goes into the histogram. Recording both variants and the
fix impact together therefore costs two forward passes per batch, not four.

Memory on top of the recorders, with the fix impact: one batch's pre_fix activations of every layer,
n_layer × B × T × n_inner values of the model's dtype (bundled model at batch 64: 4 × 8 MiB; GPT-2
small: 12 × 48 MiB; both at float32).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from nx_dagster.activations.fix_impact import DiffHistogram
from nx_dagster.activations.recorder import Batch, LayerRecord, Recorder, RecorderSettings
from nx_dagster.activations.transfer import to_device
from nx_dagster.model.gpt2 import GPT2
from nx_dagster.vocab import GELU_VARIANTS, POST_FIX, PRE_FIX

Extra = Callable[[str, int, torch.Tensor, torch.Tensor], None]  # (variant, layer, token ids, post)


@dataclass
class PassResult:
    records: dict[str, dict[int, LayerRecord]]  # variant -> layer -> records (on the CPU)
    fix_impact: DiffHistogram | None  # None unless asked for
    tokens: int  # tokens seen per variant


def record_pass(
    model: GPT2, batches: Iterable[Batch], layers: dict[str, list[int]], seq_len: int = 0,
    settings: RecorderSettings = RecorderSettings(), neurons: range | None = None, fix_impact: bool = False,
    on_batch: Callable[[int, int], None] | None = None, extra: Extra | None = None,
) -> PassResult:
    """Run each needed variant once per batch of (sequence ids [B], token ids [B, T]).

    `layers` maps a GELU variant to the layers to record (`neurons`, a contiguous range, of each);
    `fix_impact` also histograms |post_fix − pre_fix| over every activation of every layer (both
    variants then run all blocks). `extra(variant, layer, token_ids, post)` lets other accumulators
    share the pass; `on_batch(batches_done, tokens_done)` reports progress.
    Raises ValueError when `batches` is empty."""
    recorders = {v: Recorder(model, v, ls, seq_len, settings, neurons, functools.partial(extra, v) if extra else None)
                 for v, ls in layers.items() if ls}
    hist = DiffHistogram(model.config.n_layer, model.device) if fix_impact else None
    variants = [v for v in GELU_VARIANTS if v in recorders or (hist is not None and v in (PRE_FIX, POST_FIX))]
    depth = model.config.n_layer if hist is not None else None
    tokens = 0
    for i, (seq_ids, token_ids) in enumerate(batches):
        held: dict[int, torch.Tensor] = {}  # pre_fix activations by layer, until post_fix gets there

        def compare(layer: int, post: torch.Tensor) -> None:
            hist.update_pair(layer, held.pop(layer), post)  # |pre − post| = |post − pre|, exactly

        for v in variants:
            # the forward pass never reads an activation again once its block is done (nor writes one it
            # handed out), so pre_fix's can be held and then overwritten by the difference
            also = None if hist is None else {PRE_FIX: held.__setitem__, POST_FIX: compare}.get(v)
            rec = recorders.get(v)
            if rec is not None:
                rec.step(seq_ids, token_ids, depth, also)
            else:
                model(to_device(token_ids, model.device), v, on_mlp=also, logits=False, neuron_major=True)
        tokens += token_ids.numel()
        if on_batch is not None:
            on_batch(i + 1, tokens)
    if tokens == 0:
        raise ValueError("no sequences to record")
    return PassResult({v: r.finish() for v, r in recorders.items()}, hist, tokens)


def fix_impact(model: GPT2, batches: Iterable[Batch]) -> DiffHistogram:
    """Run pre_fix and post_fix on every batch of (sequence ids, token ids [B, T]) and histogram the
    per-activation differences: the same forward passes as recording (`record_pass`)."""
    return record_pass(model, batches, {}, fix_impact=True).fix_impact
