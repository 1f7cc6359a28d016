"""The one assembly point of the Dagster code location (workspace.yaml points here)."""

import dagster as dg

from assets.activations import ACTIVATION_ASSETS
from assets.classify import CLASSIFY_ASSETS
from assets.connections import CONNECTION_ASSETS
from assets.explain import EXPLAIN_ASSETS
from assets.llm import LLMResource
from assets.method_check import method_check
from assets.release import RELEASE_ASSETS
from assets.resources import NxResource
from nx_dagster.vocab import GELU_VARIANTS, POST_FIX, PRE_FIX


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[*ACTIVATION_ASSETS, *CONNECTION_ASSETS, *EXPLAIN_ASSETS, *CLASSIFY_ASSETS, method_check, *RELEASE_ASSETS],
        # unset fields come from the Settings of the process that runs a step: the API key never enters config
        resources={"nx": NxResource(), "llm": LLMResource()},
        jobs=[
            dg.define_asset_job("activations_job", selection=dg.AssetSelection.assets(
                "model", "sequences", *[[v, "activations"] for v in GELU_VARIANTS], "gelu_fix_impact")),
            dg.define_asset_job("connections_job", selection=dg.AssetSelection.assets("connections")),
            dg.define_asset_job("explain_job", selection=dg.AssetSelection.assets(
                *[[v, a] for v in GELU_VARIANTS
                  for a in ("explanations", "scores", "classification_scores", "intruder_scores")],
                [POST_FIX, f"scores_of_{PRE_FIX}_explanations"],
                [POST_FIX, f"classification_scores_of_{PRE_FIX}_explanations"])),
            dg.define_asset_job("release_job", selection=dg.AssetSelection.assets("release"),
                                description="Freeze every table into a named release (config: name, message)."),
        ],
    )
