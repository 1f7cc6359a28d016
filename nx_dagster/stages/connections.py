"""Stage `connections`: the `neuron_connections` and `token_connections` rows of some layers.

Connections depend on the checkpoint's weights only (no GELU variant). `write_connections` computes the
rows of some layers and replaces those layers' partitions in the catalog, so writing twice leaves one copy.
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from nx_dagster.connections.neurons import check_layers, neuron_connection_rows
from nx_dagster.connections.tokens import token_connection_rows
from nx_dagster.model.checkpoint import raw_weights

log = logging.getLogger(__name__)


def _strongest(table: pa.Table, neuron_target: bool) -> str | None:
    """'layer/neuron ↔ target (weight)' for the row of largest |weight|, or None for no rows."""
    if table.num_rows == 0:
        return None
    row = table.slice(int(np.argmax(np.abs(table["weight"].to_numpy()))), 1).to_pylist()[0]
    target = f"{row['other_layer']}/{row['other_neuron']}" if neuron_target else repr(row["token"])
    return f"{row['layer']}/{row['neuron']} ↔ {target} ({row['weight']:+.4f})"


def layer_summary(neurons: pa.Table, tokens: pa.Table, layers: Iterable[int]) -> dict[int, dict]:
    """Per layer: row counts, the strongest connection per direction, and min/median/max of the
    stored weights (the top-k lists, both signs): what a person reads in the Dagster metadata."""
    out: dict[int, dict] = {}
    for layer in layers:
        info: dict[str, object] = {}
        for name, table, directions in (
            ("neuron", neurons, ("upstream", "downstream")), ("token", tokens, ("input", "output")),
        ):
            rows = table.filter(pc.equal(table["layer"], layer))
            info[f"{name}_rows"] = rows.num_rows
            weights = rows["weight"].to_numpy()
            if len(weights):
                info[f"{name}_weight_min"] = float(weights.min())
                info[f"{name}_weight_median"] = float(np.median(weights))
                info[f"{name}_weight_max"] = float(weights.max())
            for direction in directions:
                best = _strongest(rows.filter(pc.equal(rows["direction"], direction)), name == "neuron")
                if best is not None:
                    info[f"strongest_{direction}"] = best
        out[layer] = info
    return out


def write_connections(
    catalog, ckpt, layers: Iterable[int] | None = None, k: int = 20, device: str | torch.device = "cpu",
) -> dict:
    """Compute and store both connection tables for `layers` (all when None) of a checkpoint.

    Replaces the partitions {"model": ckpt.name, "layer": layers} of `neuron_connections` and
    `token_connections` in one catalog snapshot (both or neither). Returns {"neuron_connections": rows,
    "token_connections": rows, "snapshot": snapshot id, "layers": layer_summary(...)}.
    """
    chosen = check_layers(layers, ckpt.config.n_layer)
    weights = raw_weights(ckpt)
    neurons = neuron_connection_rows(weights, ckpt.name, chosen, k, device)
    tokens = token_connection_rows(weights, None, ckpt.name, chosen, k, device, strings=ckpt.token_strings())
    keys = {"model": ckpt.name, "layer": chosen}
    label = f"{ckpt.name} layers {chosen[0]}-{chosen[-1]}" if chosen else ckpt.name
    snapshot = catalog.replace_many(
        [("neuron_connections", neurons, keys), ("token_connections", tokens, keys)], f"connections {label} k={k}",
    )
    log.info("connections of %s: %d neuron rows, %d token rows", label, neurons.num_rows, tokens.num_rows)
    return {
        "neuron_connections": neurons.num_rows, "token_connections": tokens.num_rows, "snapshot": snapshot,
        "layers": layer_summary(neurons, tokens, chosen),
    }
