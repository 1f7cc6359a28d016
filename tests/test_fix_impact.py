import numpy as np
import torch

from nx_dagster.activations.passes import fix_impact
from nx_dagster.model import open_checkpoint
from tests.checkpoints import build_checkpoint


def test_fix_impact_matches_exact_quantiles(tmp_path):
    model = open_checkpoint(str(build_checkpoint(tmp_path / "m", n_layer=3))).load_model()
    toks = torch.randint(0, 300, (40, 16), generator=torch.Generator().manual_seed(0))
    rows = fix_impact(model, [(None, toks[:25]), (None, toks[25:])]).rows("m", "c").to_pylist()
    pre, post = [], []
    # the activations the recorder sees: the neuron-major forward pass
    model(toks, "pre_fix", on_mlp=lambda i, a: pre.append(a.clone()), neuron_major=True)
    model(toks, "post_fix", on_mlp=lambda i, a: post.append(a.clone()), neuron_major=True)
    diffs = [(b - a).abs().double().numpy().ravel() for a, b in zip(pre, post)]
    assert [r["layer"] for r in rows] == [0, 1, 2, None]
    for r, d in zip(rows, diffs + [np.concatenate(diffs)]):
        assert r["n"] == d.size
        assert np.isclose(r["max"], d.max(), rtol=1e-6)
        assert np.isclose(r["mean"], d.mean(), rtol=1e-5)
        for name, q in (("median", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
            exact = np.quantile(d, q, method="inverted_cdf")
            assert exact <= r[name] * (1 + 1e-6) and r[name] <= exact * 1.001 + 1e-9, (name, r[name], exact)
        qs = [r["median"], r["p90"], r["p99"], r["p999"], r["max"]]
        assert qs == sorted(qs), qs  # no estimate above the next one or above the exact maximum
    assert rows[0]["median"] > 0  # the variants really differ


def test_quantiles_never_exceed_the_maximum():
    """A bucket's upper edge can lie past every value in it: the reported quantile stops at the max."""
    from nx_dagster.activations.fix_impact import DiffHistogram

    h = DiffHistogram(1, "cpu")
    h.update(0, torch.full((1000,), 0.3))
    row = h.rows("m", "c").to_pylist()[0]
    assert row["median"] == row["p999"] == row["max"] == float(torch.tensor(0.3))
