"""The one-pass recording (both GELU variants and the fix impact from the same forward passes) gives
exactly the rows of separate passes: records, stats, token summaries and fix-impact rows, bit for bit."""

import pyarrow as pa
import pytest
import torch

from nx_dagster.activations import RecorderSettings, record
from nx_dagster.activations.passes import fix_impact, record_pass
from nx_dagster.corpus import CorpusSpec
from nx_dagster.model import open_checkpoint
from nx_dagster.stages.activations import write_activations, write_sequences
from nx_dagster.storage import Catalog
from nx_dagster.subject import Subject
from tests.checkpoints import build_checkpoint

SETTINGS = RecorderSettings(top_k=4, random_k=3, quantile_k=2, seed=5, batch_size=16)
TABLES = {  # every column but `source`, in a total order
    "activation_records": "gelu_variant, layer, neuron, kind, quantile, rank",
    "neuron_stats": "gelu_variant, layer, neuron",
    "token_activation_summary": "gelu_variant, layer, neuron, rank",
    "gelu_fix_impact": "layer",
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ck") / "m", n_layer=3, n_embd=32, n_head=4)


def test_record_pass_equals_separate_recorders_and_fix_impact(ckpt):
    model = open_checkpoint(str(ckpt)).load_model()
    g = torch.Generator().manual_seed(1)
    ids, toks = torch.arange(90) * 2 + 1, torch.randint(0, 300, (90, 16), generator=g)
    batches = [(ids[i:i + 16], toks[i:i + 16]) for i in range(0, 90, 16)]
    one = record_pass(model, batches, {"pre_fix": [0, 2], "post_fix": [0, 2]}, 16, SETTINGS, fix_impact=True)
    for variant in ("pre_fix", "post_fix"):
        alone = record(model, batches, variant, [0, 2], 16, SETTINGS)
        for layer in (0, 2):
            a, b = one.records[variant][layer], alone[layer]
            for got, want in ((a.top, b.top), (a.random, b.random), (a.quantile, b.quantile)):
                assert all(torch.equal(x, y) for x, y in zip(got, want))
            assert all(torch.equal(a.stats[k], b.stats[k]) for k in b.stats)
    separate = fix_impact(model, batches)
    assert torch.equal(one.fix_impact.counts, separate.counts) and torch.equal(one.fix_impact.sum, separate.sum)
    assert one.fix_impact.rows("m", "c").equals(separate.rows("m", "c"))
    assert int(one.fix_impact.counts.sum()) == 3 * 90 * 16 * model.config.n_neurons  # every activation, once


def _tables(cat: Catalog) -> dict[str, list[dict]]:
    out = {}
    for table, order in TABLES.items():
        t = cat.query(f"SELECT * FROM {table} ORDER BY {order}")
        out[table] = t.drop_columns([c for c in ("source",) if c in t.column_names]).to_pylist()
    return out


def test_one_commit_equals_three_separate_stage_runs(ckpt, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("The cat sat on the mat; the dog did not. Paris is in France. " * 60)
    s = Subject(open_checkpoint(str(ckpt)), CorpusSpec(str(corpus), 16))
    together, apart = Catalog(tmp_path / "together"), Catalog(tmp_path / "apart")
    for cat in (together, apart):
        write_sequences(cat, s)
    lines: list[str] = []
    out = write_activations(together, s, ["pre_fix", "post_fix"], [0, 1, 2], SETTINGS, report=lines.append,
                            fix_impact=True)
    assert set(out["variants"]) == {"pre_fix", "post_fix"} and isinstance(out["fix_impact"], pa.Table)
    for variant in ("pre_fix", "post_fix"):
        write_activations(apart, s, [variant], [0, 1, 2], SETTINGS)
    assert write_activations(apart, s, [], [], SETTINGS, fix_impact=True)["variants"] == {}
    got, want = _tables(together), _tables(apart)
    for table in TABLES:
        assert got[table] and got[table] == want[table], table
    assert [r["layer"] for r in got["gelu_fix_impact"]] == [0, 1, 2, None]
    # progress: counts, rate and time left while it runs, the total time at the end
    assert lines and all("tokens/s" in ln for ln in lines) and lines[-1].split(": ")[1].startswith(
        f"{out['tokens']:,}/{out['tokens']:,} tokens (100%)")
    assert "pre_fix layers [0, 1, 2] + post_fix layers [0, 1, 2] + gelu_fix_impact" in lines[-1]
