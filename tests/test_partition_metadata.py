"""Each layer partition's materialization event carries its own layer and figures (read back from the
run's event log), names the data root and corpus it describes, and its text renders as written."""

import html
import re

import dagster as dg
import pytest

from assets.definitions import defs
from assets.llm import LLMResource
from assets.metadata import markdown_table
from assets.resources import NxResource
from nx_dagster.model.gelu import VARIANTS
from nx_dagster.storage import Catalog
from tests.checkpoints import tiny_run_inputs

RANGE = {"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "1"}
COUNTS = {  # asset -> the catalog rows one layer partition holds
    ("pre_fix", "activations"): "SELECT count(*) FROM activation_records WHERE gelu_variant = 'pre_fix' AND layer = ?",
    ("post_fix", "activations"): "SELECT count(*) FROM activation_records WHERE gelu_variant = 'post_fix' AND layer = ?",
    ("connections",): "SELECT (SELECT count(*) FROM neuron_connections WHERE layer = $1) "
                      "+ (SELECT count(*) FROM token_connections WHERE layer = $1)",
    ("post_fix", "explanations"): "SELECT count(*) FROM explanations WHERE gelu_variant = 'post_fix' AND layer = ?",
    ("post_fix", "scores"): "SELECT count(*) FROM scores WHERE explanation_gelu_variant = 'post_fix' "
                            "AND gelu_variant = 'post_fix' AND layer = ?",
}


def test_each_partition_event_describes_its_own_layer(tmp_path):
    ckpt, corpus = tiny_run_inputs(tmp_path, 120)
    nx = NxResource(home=str(tmp_path / "home"), model=str(ckpt), corpus=str(corpus), seq_len=16, top_k=6,
                    random_k=5, quantile_k=2)
    instance = dg.DagsterInstance.ephemeral()
    assets = list(defs().assets)
    res = {"nx": nx, "llm": LLMResource(explainer="token_lookup", simulator="token_lookup")}
    assert dg.materialize(assets, selection=["model", "sequences"], instance=instance, resources=res).success
    selection = ["pre_fix/activations", "post_fix/activations", "gelu_fix_impact", "connections",
                 "post_fix/explanations"]
    for sel in (selection, ["post_fix/scores"]):
        assert dg.materialize(assets, selection=sel, instance=instance, resources=res, tags=RANGE).success
    cat = Catalog(nx.home)
    corpus_name = cat.query("SELECT DISTINCT corpus FROM sequences").column(0)[0].as_py()
    for path, count_sql in COUNTS.items():
        events = instance.fetch_materializations(dg.AssetKey(list(path)), limit=10).records
        by_partition = {e.partition_key: e.asset_materialization.metadata for e in events}
        assert set(by_partition) == {"0", "1"}, path
        counts = {p: m["dagster/row_count"].value for p, m in by_partition.items()}
        for partition, meta in by_partition.items():
            layer = int(partition)
            assert meta["layer"].value == layer, path
            assert counts[partition] == cat.query(count_sql, [layer]).column(0)[0].as_py() > 0, path
            assert meta["data_root"].value == str(cat.home) and meta["model"].value == "ckpt", path
            if path != ("connections",):  # weights only: no corpus
                assert meta["corpus"].value == corpus_name, path
            if path[-1] == "activations":
                pages = re.findall(r"\]\(http://127\.0\.0\.1:8765/neurons/(\d+)/\d+\.html\)",
                                   meta["strongest_neurons"].value)
                assert pages and set(pages) == {partition}  # only this layer's neurons
                assert meta["formula"].value == VARIANTS[path[0]].formula  # as written, no markdown
        if path[-1] == "activations":
            # the two partitions hold different rows (each its own), not the run's total twice
            assert by_partition["0"]["strongest_neurons"].value != by_partition["1"]["strongest_neurons"].value
    fix = instance.fetch_materializations(dg.AssetKey("gelu_fix_impact"), limit=1).records[0]
    assert fix.partition_key is None
    assert fix.asset_materialization.metadata["corpus"].value == corpus_name
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey(["post_fix", "activations"]), "no_nan")])
    evaluation = next(iter(checks.values())).event.dagster_event.event_specific_data
    assert evaluation.passed and evaluation.metadata["corpus"].value == corpus_name
    assert evaluation.metadata["data_root"].value == str(cat.home)


def test_markdown_tables_render_text_as_written():
    markdown_it = pytest.importorskip("markdown_it")
    text = ["x*sigmoid(1.702*x)", "'**'", "a|b", "activation_records", "__init__", "W_out·diag(ln_2.g)·W_in",
            "<b>_x_</b> &amp; `c` ~~s~~ [l](u) \\"]
    table = markdown_table([{"cell": t, "link": "[0/1](http://127.0.0.1:8765/neurons/0/1.html)"} for t in text],
                           raw=("link",))
    rendered = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(table)
    cells = re.findall(r"<td>(.*?)</td>", rendered)
    assert [html.unescape(c) for c in cells[0::2]] == text
    assert all(c == '<a href="http://127.0.0.1:8765/neurons/0/1.html">0/1</a>' for c in cells[1::2])
