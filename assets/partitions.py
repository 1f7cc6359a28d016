"""Layer partitions. The layer count comes from the checkpoint, so the `model` asset registers them."""

import dagster as dg

layers = dg.DynamicPartitionsDefinition(name="layers")


def register_layers(instance: dg.DagsterInstance, n_layer: int) -> None:
    wanted = [str(i) for i in range(n_layer)]
    have = instance.get_dynamic_partitions(layers.name)
    missing = [k for k in wanted if k not in have]
    if missing:
        instance.add_dynamic_partitions(layers.name, missing)
    for extra in set(have) - set(wanted):
        instance.delete_dynamic_partition(layers.name, extra)
