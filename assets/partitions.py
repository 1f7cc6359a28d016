"""Layer partitions. The layer count comes from the checkpoint, so the `model` asset registers them.

The partitions are keyed by layer number and shared by every model written to a data root (and every
run in the instance): a model with fewer layers than another must never remove a partition the other
one (perhaps in a run right now) uses, so registration only adds.
"""

import dagster as dg

layers = dg.DynamicPartitionsDefinition(name="layers")


def register_layers(instance: dg.DagsterInstance, n_layer: int) -> None:
    """Add the `layers` partitions 0..n_layer-1 that are missing; never delete one."""
    have = set(instance.get_dynamic_partitions(layers.name))
    missing = [str(i) for i in range(n_layer) if str(i) not in have]
    if missing:
        instance.add_dynamic_partitions(layers.name, missing)
