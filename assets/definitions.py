"""The one assembly point of the Dagster code location (workspace.yaml points here)."""

import dagster as dg

from assets.activations import ACTIVATION_ASSETS
from assets.connections import CONNECTION_ASSETS
from assets.resources import NxResource


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[*ACTIVATION_ASSETS, *CONNECTION_ASSETS],
        resources={"nx": NxResource()},
        jobs=[dg.define_asset_job("activations_job", selection=dg.AssetSelection.groups("corpus", "pre_fix", "post_fix", "gelu_fix"))],
    )
