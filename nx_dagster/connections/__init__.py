"""Weight-based connections (PRODUCT.md §4): neuron→neuron (`neurons`) and neuron↔token (`tokens`), from
the checkpoint's weights only (no GELU variant), each reduced to running top-k lists (`topk`). The stage
that writes them to the catalog is `nx_dagster.stages.connections`."""

from nx_dagster.connections.neurons import NEURON_SCHEMA, check_layers, neuron_connection_rows, neuron_topk
from nx_dagster.connections.tokens import TOKEN_SCHEMA, token_connection_rows, token_topk
from nx_dagster.connections.topk import RunningTopK, merge_topk, tile_topk

__all__ = [
    "NEURON_SCHEMA", "TOKEN_SCHEMA", "RunningTopK", "check_layers", "merge_topk", "neuron_connection_rows",
    "neuron_topk", "tile_topk", "token_connection_rows", "token_topk",
]
