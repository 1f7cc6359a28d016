"""Layer partitions are shared by every model of a data root: registering only ever adds."""

import dagster as dg

from assets.partitions import layers, register_layers


def test_a_smaller_model_removes_no_partition():
    instance = dg.DagsterInstance.ephemeral()
    register_layers(instance, 12)
    register_layers(instance, 4)  # a second model with fewer layers (another model's run may be using 4-11)
    assert instance.get_dynamic_partitions(layers.name) == [str(i) for i in range(12)]
    register_layers(instance, 14)
    assert instance.get_dynamic_partitions(layers.name) == [str(i) for i in range(14)]
