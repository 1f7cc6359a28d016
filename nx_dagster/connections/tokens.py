"""Neuron-to-token weight connections (PRODUCT.md §4).

    input  (token t drives neuron (l, n)):  wte[t] · diag(ln_2.g[l]) · W_in[l][:, n]
    output (neuron (l, n) drives token t):  W_out[l][n, :] · diag(ln_f.g) · wte[t]

on raw Hugging Face weights. For each neuron, the top-k tokens of each sign (`positive`: rank 0 the
largest; `negative`: rank 0 the most negative); equal weights are ordered by token id ascending.
Computed a block of neurons at a time against the whole vocabulary, so memory is the weights plus one
[rows, vocab] tile of about `tile_bytes` (64 MiB on the CPU, 1 GiB on CUDA); the [N, vocab] matrix of
a layer never exists.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from nx_dagster.connections.neurons import SIGNS, check_layers, list_columns, n_layers, weight_tensor
from nx_dagster.connections.topk import tile_topk
from nx_dagster.model.token_strings import TokenStrings
from nx_dagster.storage.schema import computed_schema

log = logging.getLogger(__name__)

TOKEN_SCHEMA = computed_schema("token_connections")
DIRECTIONS = ("input", "output")
TILE_BYTES = {"cpu": 64 << 20, "cuda": 1 << 30}  # default tile size per device type


def token_topk(
    weights: Mapping[str, Tensor], layers: Iterable[int] | None = None, k: int = 20,
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, tile_bytes: int | None = None,
) -> dict[tuple[int, str, str], tuple[Tensor, Tensor]]:
    """Top-k lists per (layer, direction, sign): (weights [N, k'], token ids [N, k']) on the CPU.
    A tile is a block of neurons against the whole vocabulary, about `tile_bytes` large."""
    if k < 1:
        raise ValueError("k must be at least 1")
    wanted = check_layers(layers, n_layers(weights))
    wte = weight_tensor(weights, "wte.weight", device, dtype)  # [V, d]
    ln_f = weight_tensor(weights, "ln_f.weight", device, dtype)  # [d]
    vocab = wte.shape[0]
    tile_bytes = tile_bytes or TILE_BYTES.get(torch.device(device).type, TILE_BYTES["cpu"])
    rows = max(1, tile_bytes // (vocab * wte.element_size()))
    out: dict[tuple[int, str, str], tuple[Tensor, Tensor]] = {}
    started = time.perf_counter()
    for layer in wanted:
        g = weight_tensor(weights, f"h.{layer}.ln_2.weight", device, dtype)
        sides = {
            "input": (weight_tensor(weights, f"h.{layer}.mlp.c_fc.weight", device, dtype) * g[:, None]).t(),  # [N, d]
            "output": weight_tensor(weights, f"h.{layer}.mlp.c_proj.weight", device, dtype) * ln_f,  # [N, d]
        }
        for direction, vectors in sides.items():
            parts: dict[str, list[tuple[Tensor, Tensor]]] = {sign: [] for sign in SIGNS}
            for start in range(0, vectors.shape[0], rows):
                tile = vectors[start:start + rows] @ wte.t()  # [rows, V]
                for sign, largest in SIGNS.items():
                    v, ids = tile_topk(tile, k, largest, dim=1)
                    parts[sign].append((v.cpu(), ids.cpu()))
            for sign, chunks in parts.items():
                out[(layer, direction, sign)] = (torch.cat([v for v, _ in chunks]), torch.cat([i for _, i in chunks]))
        log.debug("token connections: layer %d done", layer)
    log.info("token connections: %d layers, vocab %d, %.1f s", len(wanted), vocab, time.perf_counter() - started)
    return out


def token_connection_rows(
    weights: Mapping[str, Tensor], tokenizer, model_name: str, layers: Iterable[int] | None = None,
    k: int = 20, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    strings: TokenStrings | None = None,
) -> pa.Table:
    """The `token_connections` rows of `layers` (all when None), ordered by layer, direction, sign,
    neuron, rank. `strings` (the one decoder, built from `tokenizer` when None) may be shared."""
    strings = strings or TokenStrings(tokenizer)
    blocks = []
    for (layer, direction, sign), (values, ids) in sorted(token_topk(weights, layers, k, device, dtype).items()):
        n, kk = values.shape
        ids_np = ids.numpy().reshape(-1)
        blocks.append(pa.table({
            **list_columns(model_name, layer, direction, sign, n, kk),
            "token_id": ids_np.astype(np.int32),
            "token": strings.column(ids_np),
            "weight": values.numpy().reshape(-1).astype(np.float32),
        }, schema=TOKEN_SCHEMA))
    return pa.concat_tables(blocks) if blocks else TOKEN_SCHEMA.empty_table()
