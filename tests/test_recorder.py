"""The streaming recorder against brute force on the full activation tensor."""

import numpy as np
import pytest
import torch
from scipy import stats as sps

from nx_dagster.activations import RecorderSettings, cpu_kernel, record, record_rows, stats_rows
from nx_dagster.activations.recorder import LayerRecorder
from nx_dagster.activations.keys import hash_key, key_seq_id, value_key
from nx_dagster.activations.sketch import GAMMA
from nx_dagster.activations.store import Activations, TopKStore
from nx_dagster.model import open_checkpoint
from tests.checkpoints import build_checkpoint

N_SEQ, T = 150, 16


@pytest.fixture(params=["fused", "torch", "dense"])
def path(request, monkeypatch):
    """Every implementation of the per-batch update: the fused CPU kernel, the sparse torch ops, and
    the fixed-shape torch ops (CUDA's fallback; the Triton kernels are in test_recorder_triton.py)."""
    monkeypatch.setenv("NX_RECORDER", request.param)
    assert cpu_kernel.available() == (request.param == "fused")
    return request.param


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = build_checkpoint(tmp_path_factory.mktemp("ck") / "m", n_layer=2, n_embd=32, n_head=4)
    return open_checkpoint(str(folder)).load_model()


def corpus():
    g = torch.Generator().manual_seed(3)
    return torch.arange(N_SEQ) * 3 + 5, torch.randint(0, 300, (N_SEQ, T), generator=g)  # non-contiguous ids


def batches(ids, toks, bs):
    return [(ids[i:i + bs], toks[i:i + bs]) for i in range(0, len(ids), bs)]


def full_acts(model, toks, variant):
    out = {}
    model(toks, variant, on_mlp=lambda i, a: out.__setitem__(i, a.clone()))
    return out  # layer -> [S, T, N]


@pytest.mark.parametrize("variant", ["pre_fix", "post_fix"])
def test_top_k_is_exact_and_random_is_batch_independent(model, variant, path):
    ids, toks = corpus()
    s = RecorderSettings(top_k=7, random_k=6, quantile_k=3, seed=11)
    a = record(model, batches(ids, toks, 16), variant, [0, 1], T, s)
    b = record(model, batches(ids, toks, 37), variant, [0, 1], T, s)
    acts = full_acts(model, toks, variant)
    for layer in (0, 1):
        seq_max = acts[layer].amax(dim=1)  # [S, N]
        for n in range(seq_max.shape[1]):
            order = sorted(range(N_SEQ), key=lambda i: (-seq_max[i, n].item(), ids[i].item()))[:7]
            assert a[layer].top[0][n].tolist() == [ids[i].item() for i in order]
            assert torch.equal(a[layer].top[1][n], acts[layer][order, :, n])
        assert torch.equal(a[layer].random[0], b[layer].random[0])  # batching does not change the sample
        # random sample = the 6 highest hash keys among all sequences, per neuron
        keys = hash_key(11, layer, torch.arange(seq_max.shape[1]), ids)
        expect = key_seq_id(keys.topk(6, dim=0).values).T
        assert torch.equal(a[layer].random[0], expect)


def test_moments_and_quantile_bins(model, path):
    ids, toks = corpus()
    rec = record(model, batches(ids, toks, 32), "post_fix", [1], T, RecorderSettings(quantile_k=4))[1]
    x = full_acts(model, toks, "post_fix")[1].reshape(-1, 128).double().numpy()
    st = rec.stats
    np.testing.assert_allclose(st["mean"].numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st["variance"].numpy(), x.var(0), rtol=1e-4)
    np.testing.assert_allclose(st["skewness"].numpy(), sps.skew(x, axis=0), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(st["kurtosis"].numpy(), sps.kurtosis(x, axis=0), rtol=1e-3, atol=1e-4)
    seq_max = full_acts(model, toks, "post_fix")[1].amax(dim=1).double().numpy()  # [S, N]
    bnd = st["boundaries"].numpy()
    assert np.all(bnd <= st["max"].numpy()[:, None]) and np.all(np.diff(bnd, axis=1) >= 0)
    for j, q in enumerate((0.5, 0.9, 0.99, 0.999)):
        exact = np.quantile(seq_max, q, axis=0, method="inverted_cdf")
        lo, hi = np.minimum(exact, exact * GAMMA), np.maximum(exact, exact * GAMMA)
        assert np.all((bnd[:, j] >= lo - 1e-4) & (bnd[:, j] <= hi + 1e-4)), f"boundary {q}"
    bins, seqs, acts = rec.quantile
    valid = seqs >= 0
    m = acts.amax(dim=2).double()
    lower = np.concatenate([np.full((bnd.shape[0], 1), -np.inf), bnd], 1)
    upper = np.concatenate([bnd, np.full((bnd.shape[0], 1), np.inf)], 1)
    b = bins.clamp_min(0).numpy()
    rows = np.arange(len(b))[:, None]
    assert np.all(~valid.numpy() | ((m.numpy() > lower[rows, b]) & (m.numpy() <= upper[rows, b])))
    assert valid[:, :4].all(), "bin 0 always has samples"


def test_store_ties_are_deterministic():
    store = TopKStore(n_neurons=2, k=3, seq_len=1, device="cpu")
    vals = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.5, 2.0]])
    for chunk in (slice(3, 5), slice(0, 3)):  # arrival order must not matter
        seq = torch.arange(5)[chunk]
        store.update(value_key(vals[chunk], seq), Activations(vals[chunk][:, None, :]))
    keys, _ = store.sorted()
    assert key_seq_id(keys).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_negative_values_order():
    v = torch.tensor([[-0.1], [-0.2], [0.0], [3.0], [-0.0]])
    k = value_key(v, torch.arange(5)).squeeze(1)
    assert torch.argsort(k, descending=True).tolist() == [3, 2, 4, 0, 1]


def test_signed_zeros_tie_and_every_nan_ranks_first():
    """-0.0 and +0.0 are equal activations (the lower sequence id first), and a NaN ranks above every
    number whatever its sign bit (x86 makes negative NaNs), as torch.sort ranks NaN."""
    neg_nan = -torch.tensor([float("nan")])
    assert neg_nan.view(torch.int32).item() < 0  # the sign bit is set
    v = torch.cat([torch.tensor([-0.1, -0.0, 0.0, 3.0, -0.2]), neg_nan, torch.tensor([float("nan"), float("inf")])])
    k = value_key(v[:, None], torch.arange(len(v))).squeeze(1)
    assert torch.argsort(k, descending=True).tolist() == [5, 6, 7, 3, 1, 2, 0, 4]


def test_rows_shape(model):
    ids, toks = corpus()
    rec = record(model, batches(ids, toks, 64), "pre_fix", [0], T, RecorderSettings(top_k=4, random_k=3, quantile_k=2))[0]
    rows = record_rows(rec, "m", "c", "pre_fix")
    assert rows.num_rows == 128 * (4 + 3) + int((rec.quantile[1] >= 0).sum())
    top = rows.filter(rows["kind"].to_numpy(zero_copy_only=False) == "top").to_pylist()
    assert [r["split"] for r in top[:4]] == ["train", "calibration", "valid", "test"]
    assert all(r["quantile"] is None for r in top)
    assert stats_rows(rec, "m", "c", "pre_fix").num_rows == 128


def test_moments_same_for_both_memory_layouts():
    from nx_dagster.activations.moments import Moments

    x = torch.randn(6, 16, 40) * 0.3 + 0.05  # [B, T, N]
    standard, neuron_major = Moments(40, "cpu"), Moments(40, "cpu")
    for part in (x[:4], x[4:]):
        standard.update(part, part.amax(dim=1))
        nm = part.permute(2, 0, 1).contiguous().permute(1, 2, 0)  # same values, [N, B, T] memory
        assert not nm.is_contiguous()
        neuron_major.update(nm, part.amax(dim=1))
    a, b = standard.result(), neuron_major.result()
    flat = x.reshape(-1, 40).double().numpy()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b["kurtosis"].numpy(), sps.kurtosis(flat, axis=0), rtol=1e-3, atol=1e-4)


def _stream(n_neurons=300, batch=32, seq_len=16, n_batches=40):
    """Activations with ties (a quarter-step grid), constant neurons, negatives and a wide range."""
    g = torch.Generator().manual_seed(0)
    for i in range(n_batches):
        x = torch.randn(batch, seq_len, n_neurons, generator=g) * torch.linspace(0.01, 3, n_neurons)
        x[:, :, :50] = (x[:, :, :50] * 4).round() / 4
        x[:, :, 50:60] = -0.05
        nbt = x.permute(2, 0, 1).contiguous()  # neuron-major memory, as the forward pass hands it over
        yield torch.arange(i * batch, (i + 1) * batch) * 7 + 3, nbt.permute(1, 2, 0)


@pytest.mark.parametrize("neurons", [range(0, 300), range(40, 250)])
def test_fused_kernel_matches_torch_path(monkeypatch, neurons):
    """The fused CPU kernel and the torch paths keep the same keys, activations, sketch and boundaries;
    the moments agree to float rounding (they sum in another order)."""
    out = {}
    for p in ("torch", "fused", "dense"):
        monkeypatch.setenv("NX_RECORDER", p)
        rec = LayerRecorder(3, torch.arange(neurons.start, neurons.stop), 16, RecorderSettings(seed=5), "cpu")
        for seq_ids, post in _stream():
            full = torch.zeros(post.shape[2], post.shape[0], post.shape[1])
            full[:] = post.permute(2, 0, 1)  # the recorder slices its neurons out of the whole layer
            rec.update(seq_ids, full.permute(1, 2, 0))
        out[p] = (rec.sketch.counts.clone(), rec.boundaries.clone(), rec.finish())
    (ca, ba, a), (cb, bb, b), (cc, bc, c) = out["torch"], out["fused"], out["dense"]
    assert torch.equal(ca, cb) and torch.equal(ba, bb) and torch.equal(ca, cc) and torch.equal(ba, bc)
    for kind in ("top", "random", "quantile"):
        for u, v, w in zip(getattr(a, kind), getattr(b, kind), getattr(c, kind)):
            assert torch.equal(u, v) and torch.equal(u, w), kind
    assert (a.top[0] >= 0).all() and (a.quantile[0] >= 0).any()
    assert torch.equal(a.stats["max"], b.stats["max"])
    x = torch.cat([post.permute(2, 0, 1)[neurons.start:neurons.stop] for _, post in _stream()], dim=1)
    x = x.reshape(len(neurons), -1).double().numpy().T  # [tokens, N] exact, in float64
    const = x.std(0) == 0  # constant neurons: no skewness or kurtosis (NaN in both paths)
    v = x[:, ~const]
    exact = {"mean": v.mean(0), "variance": v.var(0), "skewness": sps.skew(v, 0), "kurtosis": sps.kurtosis(v, 0)}
    assert 0 < const.sum() < len(const)
    for k, want in exact.items():
        for got in (a.stats[k].numpy(), b.stats[k].numpy()):
            if k in ("skewness", "kurtosis"):
                assert np.isnan(got[const]).all(), k
            np.testing.assert_allclose(got[~const], want, rtol=1e-4, atol=2e-5, err_msg=k)


def test_fused_kernel_propagates_nan(monkeypatch):
    monkeypatch.setenv("NX_RECORDER", "fused")
    rec = LayerRecorder(0, torch.arange(4), 8, RecorderSettings(top_k=2, random_k=2, quantile_k=1), "cpu")
    x = torch.rand(3, 8, 4)
    x[1, 5, 2] = float("nan")
    rec.update(torch.arange(3), x.permute(2, 0, 1).contiguous().permute(1, 2, 0))
    r = rec.finish()
    assert torch.isnan(r.stats["mean"][2]) and torch.isnan(r.stats["max"][2])
    assert not torch.isnan(r.stats["mean"][[0, 1, 3]]).any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_recording_matches_cpu(model):
    """The CUDA path (the Triton kernels; `test_recorder_triton.py` holds them to the torch ops bit for
    bit) against the CPU kernel on the same tokens; GPU matmuls
    round differently, so activations agree to 1e-4 and the chosen sequences almost everywhere."""
    ids, toks = corpus()
    s = RecorderSettings(top_k=7, random_k=6, quantile_k=3, seed=11)
    cpu = record(model, batches(ids, toks, 32), "post_fix", [0, 1], T, s)
    gpu = record(model.to("cuda"), batches(ids, toks, 32), "post_fix", [0, 1], T, s)
    for layer in (0, 1):
        a, b = cpu[layer], gpu[layer]
        assert torch.equal(a.random[0], b.random[0])  # hash order: independent of the values
        np.testing.assert_allclose(b.top[1][:, 0].amax(dim=1), a.top[1][:, 0].amax(dim=1), atol=1e-4)
        assert (a.top[0] == b.top[0]).float().mean() > 0.99
        for k in ("mean", "variance"):
            np.testing.assert_allclose(b.stats[k], a.stats[k], rtol=1e-3, atol=1e-5)
    half = record(model.to("cuda", torch.bfloat16), batches(ids, toks, 32), "post_fix", [1], T, s)[1]
    assert torch.isfinite(half.stats["mean"]).all() and (half.top[0] >= 0).all()


@pytest.mark.slow
def test_fused_power_sums_compile_to_the_same_sums(monkeypatch):
    """What a GPU runs for the moments: `power_sums` through torch.compile (here inductor's CPU code;
    on CUDA, Triton). It must give the eager sums, for float32 and bfloat16 activations."""
    from nx_dagster.activations import moments

    monkeypatch.setattr(moments, "_COMPILED", {})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 2048, generator=g) * 0.7 + 0.1
    shift = x.mean(dim=1)
    for data in (x, x.bfloat16()):
        eager = moments.power_sums(data, shift).double()
        fused = moments.fused_power_sums(data, shift).double()
        assert moments._COMPILED["fn"] is not moments.power_sums, "compilation fell back to eager"
        np.testing.assert_allclose(fused.numpy(), eager.numpy(), rtol=1e-4, atol=1e-3)
        exact = np.stack([((data.double() - shift.double()[:, None]) ** p).sum(1).numpy() for p in (1, 2, 3, 4)])
        np.testing.assert_allclose(fused.numpy(), exact, rtol=1e-4, atol=1e-3)
