"""Assets of the `connections` stage: weight-based neuron→neuron and neuron↔token connections.

They depend on the checkpoint's weights only, so they sit outside both GELU lineages (group
`connections`), are partitioned by layer, and become stale when the checkpoint's hash changes.
"""

import warnings

import dagster as dg

from assets.partitions import layers
from assets.resources import NxResource
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
    from nx_dagster.stages.connections import write_connections  # torch code: imported by a run, not at load

    s = nx.subject
    layer_list = sorted(int(k) for k in context.partition_keys)
    out = write_connections(nx.catalog, s.ckpt, layer_list, config.k, s.device)
    context.log.info(f"connections of layers {layer_list}: {out['neuron_connections']:,} neuron rows, "
                     f"{out['token_connections']:,} token rows")
    for layer, info in out["layers"].items():  # each partition's own figures
        context.add_asset_metadata({
            "layer": layer, "dagster/row_count": info["neuron_rows"] + info["token_rows"],
            "neuron_connection_rows": info["neuron_rows"], "token_connection_rows": info["token_rows"],
            **{k: v for k, v in info.items() if k.startswith(("strongest", "neuron_weight", "token_weight"))},
        }, partition_key=str(layer))
    version = short_digest({"code": CONNECTIONS_VERSION, "model_data_version": s.ckpt.data_version, "k": config.k,
                            "device": s.device.split(":")[0], "dtype": nx.dtype}, 16)
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        # weights only: no corpus and no GELU variant enter these tables
        **nx.catalog.describe(), "model": s.name, "k": config.k, "pass_layers": layer_list,
        "formulas": dg.MetadataValue.text("neuron: W_out[l1][n1,:] · diag(ln_2.g[l2]) · W_in[l2][:,n2]; "
                                          "token input: wte[t] · diag(ln_2.g[l]) · W_in[l][:,n]; "
                                          "token output: W_out[l][n,:] · diag(ln_f.g) · wte[t]"),
        "catalog_snapshot": out["snapshot"],
    })


CONNECTION_ASSETS = [connections]
