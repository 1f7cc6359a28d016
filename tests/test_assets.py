"""Dagster tier: materialize the assets into a temporary NX_HOME with the real catalog and instance."""

import json
import shutil

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from assets.definitions import defs
from assets.llm import LLMResource
from assets.resources import NxResource
from nxd.cli import main
from nx_dagster.storage import Catalog
from tests.checkpoints import build_checkpoint, tiny_run_inputs

RANGE = {"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "1"}


@pytest.fixture()
def setup(tmp_path):
    ckpt, corpus = tiny_run_inputs(tmp_path, 120)
    nx = NxResource(home=str(tmp_path / "home"), model=str(ckpt), corpus=str(corpus), seq_len=16, top_k=6,
                    random_k=5, quantile_k=2)
    return dg.DagsterInstance.ephemeral(), nx, tmp_path


def materialize(instance, nx, selection, **kw):
    d = defs()
    result = dg.materialize(list(d.assets), selection=selection, instance=instance,
                            resources={"nx": nx, "llm": LLMResource(explainer="token_lookup", simulator="token_lookup")},
                            **kw)
    assert result.success
    return result


def test_materialize_all_and_rerun_is_idempotent(setup):
    instance, nx, _ = setup
    materialize(instance, nx, ["model", "sequences"])
    assert instance.get_dynamic_partitions("layers") == ["0", "1"]
    acts = ["pre_fix/activations", "post_fix/activations"]
    r = materialize(instance, nx, acts, tags=RANGE)
    checks = r.get_asset_check_evaluations()
    assert len(checks) == 6 and all(c.passed for c in checks), [(c.check_name, c.metadata) for c in checks]
    mats = r.asset_materializations_for_node("activations")
    assert {m.partition for m in mats} == {"0", "1"}
    assert "strongest_neurons" in mats[0].metadata and mats[0].metadata["dagster/row_count"].value > 0
    cat = Catalog(nx.home)
    count = "SELECT gelu_variant, layer, kind, count(*) AS n FROM activation_records GROUP BY ALL ORDER BY ALL"
    before = cat.query(count).to_pylist()
    content = ("SELECT md5(string_agg(x::VARCHAR, '|' ORDER BY x::VARCHAR)) FROM (SELECT {t} AS x FROM {t} "
               "WHERE gelu_variant = 'pre_fix' AND layer = 1)")
    tables = ("activation_records", "neuron_stats")
    digest = {t: cat.query(content.format(t=t)).column(0)[0].as_py() for t in tables}
    assert all(digest.values())
    assert {(r["gelu_variant"], r["kind"], r["n"]) for r in before if r["kind"] != "quantile"} == {
        (v, "top", 6 * 128) for v in ("pre_fix", "post_fix")} | {(v, "random", 5 * 128) for v in ("pre_fix", "post_fix")}
    materialize(instance, nx, ["pre_fix/activations"], partition_key="1")  # one partition again
    materialize(instance, nx, ["model", "sequences"])
    assert cat.query(count).to_pylist() == before
    # same seed, same corpus: the rerun partition holds exactly the same rows, values included
    assert {t: cat.query(content.format(t=t)).column(0)[0].as_py() for t in tables} == digest
    assert cat.query("SELECT count(*) FROM sequences").column(0)[0].as_py() == cat.query(
        "SELECT count(DISTINCT sequence_id) FROM sequences").column(0)[0].as_py()
    fi = materialize(instance, nx, ["gelu_fix_impact"]).asset_materializations_for_node("activations")[0]
    assert "fix_impact" in fi.metadata and fi.metadata["overall_median"].value > 0
    rows = cat.query("SELECT layer FROM gelu_fix_impact ORDER BY layer NULLS LAST").column(0).to_pylist()
    assert rows == [0, 1, None]


def test_new_checkpoint_marks_downstream_stale(setup):
    instance, nx, tmp_path = setup
    materialize(instance, nx, ["model", "sequences"])
    materialize(instance, nx, ["post_fix/activations"], partition_key="0")
    assets = list(defs().assets)
    key = dg.AssetKey(["post_fix", "activations"])
    fresh = get_stale_status_resolver(instance, assets)
    assert fresh.get_status(dg.AssetKey("sequences")) == StaleStatus.FRESH
    assert fresh.get_status(key, "0") == StaleStatus.FRESH
    build_checkpoint(tmp_path / "ckpt", n_layer=2, n_embd=32, n_head=4, seed=7)  # new weights, same place
    materialize(instance, nx, ["model"])
    after = get_stale_status_resolver(instance, assets)
    assert after.get_status(dg.AssetKey("sequences")) == StaleStatus.STALE
    assert after.get_status(key, "0") == StaleStatus.STALE


def test_cli_run_and_sql(tmp_path, monkeypatch, capsys):
    ckpt = build_checkpoint(tmp_path / "ckpt", n_layer=2, n_embd=32, n_head=4)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": "one two three four five six seven " * 30}) for _ in range(5)))
    dhome = tmp_path / "dagster_home"
    dhome.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(dhome))
    monkeypatch.setenv("NX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NX_MODEL", str(ckpt))
    monkeypatch.setenv("NX_CORPUS", str(corpus))
    assert main(["run", "--stages", "activations", "--variants", "pre_fix", "--layers", "1", "--seq-len", "16"]) == 0
    progress = [ln for ln in capsys.readouterr().err.splitlines() if "activations: pre_fix layers [1]: " in ln]
    assert progress and "tokens (100%)" in progress[-1] and "tokens/s" in progress[-1]  # the long stage's progress
    assert main(["sql", "--format", "json", "SELECT layer, count(*) AS n FROM neuron_stats GROUP BY layer"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"layer": 1, "n": 128}]
    assert main(["sql", "--format", "csv", "SELECT model, n_layer FROM models"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"model","n_layer"', '"ckpt",2']
    with dg.DagsterInstance.get() as instance:  # the runs are in the instance the UI reads
        assert len(instance.get_runs()) == 2


def test_connections_partitioned_and_recomputed_on_new_weights(setup):
    instance, nx, tmp_path = setup
    materialize(instance, nx, ["model"])
    r = materialize(instance, nx, ["connections"], tags=RANGE)
    assert {m.partition for m in r.asset_materializations_for_node("connections")} == {"0", "1"}
    cat = Catalog(nx.home)
    q = "SELECT layer, direction, sign, rank, other_layer, other_neuron, weight FROM neuron_connections ORDER BY ALL"
    first = cat.query(q).to_pylist()
    assert {(r["layer"], r["direction"]) for r in first} == {(0, "downstream"), (1, "upstream")}
    assert cat.query("SELECT count(*) FROM token_connections").column(0)[0].as_py() == 2 * 128 * 2 * 2 * 20
    build_checkpoint(tmp_path / "ckpt", n_layer=2, n_embd=32, n_head=4, seed=9)
    materialize(instance, nx, ["model"])
    assets = list(defs().assets)
    assert get_stale_status_resolver(instance, assets).get_status(dg.AssetKey("connections"), "0") == StaleStatus.STALE
    materialize(instance, nx, ["connections"], tags=RANGE)
    second = cat.query(q).to_pylist()
    assert len(second) == len(first) and second != first
