"""Assets of the `connections` stage: weight-based neuron→neuron and neuron↔token connections.

They depend on the checkpoint's weights only, so they sit outside both GELU lineages (group
`connections`), are partitioned by layer, and become stale when the checkpoint's hash changes.
"""

import warnings

import dagster as dg

from assets.metadata import markdown_table
from assets.partitions import layers
from assets.resources import NxResource
from nx_dagster.connections import write_connections
from nx_dagster.hashing import short_digest

warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")


class ConnectionsConfig(dg.Config):
    k: int = 20  # top-k per neuron, direction and sign


CONNECTIONS_VERSION = "connections-v1"


@dg.asset(
    key="connections", deps=["model"], partitions_def=layers, group_name="connections", kinds={"pytorch", "duckdb"},
    code_version=CONNECTIONS_VERSION, pool="compute", backfill_policy=dg.BackfillPolicy.single_run(),
    description="Tables neuron_connections (upstream/downstream neurons via W_out·diag(ln_2.g)·W_in) and "
                "token_connections (input via wte·diag(ln_2.g)·W_in, output via W_out·diag(ln_f.g)·wte). "
                "One partition = one layer's neurons.",
)
def connections(context: dg.AssetExecutionContext, nx: NxResource, config: ConnectionsConfig) -> dg.MaterializeResult:
    s = nx.subject
    layer_list = sorted(int(k) for k in context.partition_keys)
    out = write_connections(nx.catalog, s.ckpt, layer_list, config.k, s.device)
    per_layer = [{"layer": layer, **{k: v for k, v in info.items() if k.startswith(("strongest", "neuron_weight"))}}
                 for layer, info in out["layers"].items()]
    context.log.info(f"connections of layers {layer_list}: {out['neuron_connections']:,} neuron rows, "
                     f"{out['token_connections']:,} token rows")
    version = short_digest({"code": CONNECTIONS_VERSION, "model_data_version": s.ckpt.data_version, "k": config.k,
                            "device": s.device.split(":")[0], "dtype": nx.dtype}, 16)
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        **nx.catalog.describe(), "model": s.name, "layers": layer_list, "k": config.k,
        "dagster/row_count": out["neuron_connections"] + out["token_connections"],
        "neuron_connection_rows": out["neuron_connections"], "token_connection_rows": out["token_connections"],
        "per_layer": dg.MetadataValue.md(markdown_table(per_layer)), "catalog_snapshot": out["snapshot"],
    })


CONNECTION_ASSETS = [connections]
