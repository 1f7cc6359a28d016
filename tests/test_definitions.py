"""Definitions smoke test: the code location loads the way `dagster dev` loads it."""

import subprocess
import sys

from assets.definitions import defs


def test_dagster_definitions_validate():
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful" in out.stdout + out.stderr


def test_two_lineages_and_weights_only_connections():
    d = defs()
    graph = d.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for v in ("pre_fix", "post_fix"):
        assert {f"{v}/activations", f"{v}/explanations", f"{v}/scores"} <= keys
        assert graph.get(dg_key(f"{v}/activations")).parent_keys >= {dg_key("model"), dg_key("sequences")}
    assert graph.get(dg_key("connections")).parent_keys == {dg_key("model")}
    cross = graph.get(dg_key("post_fix/scores_of_pre_fix_explanations")).parent_keys
    assert cross == {dg_key("pre_fix/explanations"), dg_key("post_fix/activations")}


def dg_key(text):
    import dagster as dg

    return dg.AssetKey(text.split("/"))
