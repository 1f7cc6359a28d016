"""Neuron-to-neuron weight connections (PRODUCT.md §4), one layer pair at a time.

For l1 < l2 the connection of neuron (l1, n1) into neuron (l2, n2) is

    W_out[l1][n1, :] · diag(ln_2.g[l2]) · W_in[l2][:, n2]

on raw Hugging Face weights (`c_proj.weight` is W_out [N, d], `c_fc.weight` is W_in [d, N]). For a pair
of layers the whole [N, N] block is one matmul; its rows feed the downstream lists of layer l1 and its
columns the upstream lists of layer l2, merged into running top-k lists (`topk.RunningTopK`), so each
pair is computed once and the full [L·N, L·N] matrix never exists. Memory: the weights, one [N, N]
tile, and rows × k per list.

Rows: for each requested layer, neuron, direction (`upstream`: earlier layers; `downstream`: later
layers) and sign (`positive`: largest weights, rank 0 the largest; `negative`: most negative, rank 0
the most negative), the top k. Ties: equal weights are ordered by (other_layer, other_neuron)
ascending, and the lower one keeps its place at the cut.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from nx_dagster.connections.topk import RunningTopK
from nx_dagster.storage.schema import computed_schema

log = logging.getLogger(__name__)

SIGNS: dict[str, bool] = {"positive": True, "negative": False}  # sign -> largest
NEURON_SCHEMA = computed_schema("neuron_connections")
TopKLists = dict[tuple[int, str, str], tuple[Tensor, Tensor]]  # (layer, direction, sign) -> (values, ids)


def n_layers(weights: Mapping[str, Tensor]) -> int:
    """Number of transformer blocks in a raw (prefix-stripped) Hugging Face state dict."""
    n = 0
    while f"h.{n}.mlp.c_fc.weight" in weights:
        n += 1
    if n == 0:
        raise ValueError("weights hold no h.{l}.mlp.c_fc.weight: not a GPT-2 state dict")
    return n


def check_layers(layers: Iterable[int] | None, n_layer: int) -> list[int]:
    """Sorted unique layers; all of them when None."""
    chosen = sorted(set(range(n_layer) if layers is None else (int(x) for x in layers)))
    bad = [x for x in chosen if not 0 <= x < n_layer]
    if bad:
        raise ValueError(f"layers {bad} out of range 0-{n_layer - 1}")
    return chosen


def weight_tensor(weights: Mapping[str, Tensor], key: str, device, dtype: torch.dtype) -> Tensor:
    """One weight tensor on `device` in `dtype`; non-finite weights are refused."""
    t = weights[key].to(device=device, dtype=dtype)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"weight {key} holds NaN or infinite values")
    return t


def neuron_topk(
    weights: Mapping[str, Tensor], layers: Iterable[int] | None = None, k: int = 20,
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
) -> TopKLists:
    """Top-k lists per (layer, direction, sign) for `layers`: values [N, k'] and global ids
    (other_layer · N + other_neuron) [N, k'], on the CPU. k' < k only where fewer candidates exist."""
    if k < 1:
        raise ValueError("k must be at least 1")
    n_layer = n_layers(weights)
    wanted = check_layers(layers, n_layer)
    chosen = set(wanted)
    if not wanted:
        return {}
    w_out = [weight_tensor(weights, f"h.{l}.mlp.c_proj.weight", device, dtype) for l in range(n_layer)]  # [N, d]
    n = w_out[0].shape[0]
    lists = {
        (layer, direction, sign): RunningTopK(n, k, largest, device, dtype)
        for layer in wanted for direction in ("upstream", "downstream") for sign, largest in SIGNS.items()
    }
    started, pairs = time.perf_counter(), 0
    for l2 in range(1, n_layer):
        if l2 not in chosen and min(chosen) >= l2:
            continue
        g = weight_tensor(weights, f"h.{l2}.ln_2.weight", device, dtype)
        w_in = g[:, None] * weight_tensor(weights, f"h.{l2}.mlp.c_fc.weight", device, dtype)  # [d, N]
        for l1 in range(l2):
            if l1 not in chosen and l2 not in chosen:
                continue
            tile = w_out[l1] @ w_in  # [N (l1 neurons), N (l2 neurons)]
            if l1 in chosen:
                for sign in SIGNS:
                    lists[(l1, "downstream", sign)].add_tile(tile, offset=l2 * n)
            if l2 in chosen:
                tile = tile.t().contiguous()  # row-wise top-k on a copy beats column-wise on the CPU
                for sign in SIGNS:
                    lists[(l2, "upstream", sign)].add_tile(tile, offset=l1 * n)
            del tile
            pairs += 1
        log.debug("neuron connections: layer %d done (%d pairs so far)", l2, pairs)
    log.info("neuron connections: %d layer pairs, %d layers, %.1f s", pairs, len(wanted), time.perf_counter() - started)
    return {key: state.result() for key, state in lists.items()}


def list_columns(model: str, layer: int, direction: str, sign: str, n: int, k: int) -> dict:
    """The columns that place each entry of one layer's [n, k] top-k lists of (direction, sign): every
    neuron's k entries in rank order, neuron by neuron."""
    count = n * k
    return {
        "model": pa.repeat(pa.scalar(model), count),
        "layer": pa.repeat(pa.scalar(layer), count),
        "neuron": np.repeat(np.arange(n, dtype=np.int32), k),
        "direction": pa.repeat(pa.scalar(direction), count),
        "sign": pa.repeat(pa.scalar(sign), count),
        "rank": np.tile(np.arange(k, dtype=np.int32), n),
    }


def lists_to_table(model: str, lists: TopKLists, n_per_layer: int) -> pa.Table:
    """Rows of `neuron_connections` from top-k lists, ordered by layer, direction, sign, neuron, rank."""
    blocks = []
    for (layer, direction, sign), (values, ids) in sorted(lists.items()):
        rows, kk = values.shape
        if rows * kk == 0:
            continue
        ids_np = ids.numpy().reshape(-1)
        blocks.append(pa.table({
            **list_columns(model, layer, direction, sign, rows, kk),
            "other_layer": (ids_np // n_per_layer).astype(np.int32),
            "other_neuron": (ids_np % n_per_layer).astype(np.int32),
            "weight": values.numpy().reshape(-1).astype(np.float32),
        }, schema=NEURON_SCHEMA))
    if not blocks:
        return NEURON_SCHEMA.empty_table()
    return pa.concat_tables(blocks)


def neuron_connection_rows(
    weights: Mapping[str, Tensor], model_name: str, layers: Iterable[int] | None = None, k: int = 20,
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
) -> pa.Table:
    """The `neuron_connections` rows of `layers` (all when None): for each of their neurons, the top-k
    upstream and downstream connections of each sign. `dtype` is the compute precision (float32 by
    default; float64 for reference checks); weights are stored as float32."""
    lists = neuron_topk(weights, layers, k, device, dtype)
    n = weights["h.0.mlp.c_proj.weight"].shape[0]
    return lists_to_table(model_name, lists, n)
