"""The Triton recorder kernels (what CUDA runs) against the fused CPU kernel, the torch ops and brute
force. Without a GPU they run in Triton's interpreter: slow, so the streams here are small."""

import collections

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from nx_dagster.activations import RecorderSettings, gpu_update, record
from nx_dagster.activations.recorder import LayerRecorder, choose_path
from nx_dagster.activations.transfer import to_host

triton_cpu = pytest.mark.skipif(not gpu_update.usable(torch.device("cpu")),
                                reason="needs Triton in interpreter mode (pip install triton; no CUDA)")
N_ALL, B, T = 12, 8, 8


def _stream(n_batches=5, sizes=None, t=T, seed=0):
    """Ties (a half-step grid), a constant neuron, negatives, a NaN in one sequence of neuron 6; the
    layer has 12 neurons and the recorder takes 1-10 (a sub-range). `sizes`: batch sizes (default
    B each); sequence ids ascend across batches but not within one when seed > 0."""
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or [B] * n_batches
    start = 0
    for i, b in enumerate(sizes):
        x = torch.randn(b, t, N_ALL, generator=g) * torch.linspace(0.05, 3, N_ALL)
        x[:, :, 1:4] = (x[:, :, 1:4] * 2).round() / 2
        x[:, :, 4] = -0.05
        if i == 3:
            x[2, min(5, t - 1), 6] = float("nan")
        nbt = x.permute(2, 0, 1).contiguous()  # neuron-major memory, as the forward pass hands it over
        ids = torch.arange(start, start + b) * 5 + 2
        start += b
        yield (ids[torch.randperm(b, generator=g)] if seed else ids), nbt.permute(1, 2, 0)


def _same(u: torch.Tensor, v: torch.Tensor) -> bool:
    """Equal values, with NaN equal to NaN (the NaN sequence is recorded too)."""
    if not u.is_floating_point():
        return torch.equal(u, v)
    return torch.equal(u.isnan(), v.isnan()) and torch.equal(u.nan_to_num(), v.nan_to_num())


def _run(path: str, neurons=range(1, 11), s=RecorderSettings(top_k=3, random_k=3, quantile_k=2, seed=7), **stream):
    rec = LayerRecorder(2, torch.arange(neurons.start, neurons.stop), stream.get("t", T), s, "cpu", path=path)
    for seq_ids, post in _stream(**stream):
        rec.update(seq_ids, post)
    return rec.sketch.counts.clone(), rec.boundaries.clone(), rec.finish()


@pytest.mark.slow
@triton_cpu
def test_triton_kernels_match_cpu_kernel_and_brute_force():
    """Bit-identical keys, sequence ids, activations, bins, sketch counts and boundaries; moments to
    float rounding (another summation order)."""
    counts, bounds, got = _run("triton")
    for path in ("fused", "dense"):
        c, b, want = _run(path)
        assert torch.equal(counts, c) and torch.equal(bounds, b), path
        for kind in ("top", "random", "quantile"):
            for u, v in zip(getattr(got, kind), getattr(want, kind)):
                assert _same(u, v), (path, kind)
        assert torch.equal(got.stats["max"].isnan(), want.stats["max"].isnan())
        for k in ("mean", "variance", "skewness", "kurtosis", "max"):
            np.testing.assert_allclose(got.stats[k].numpy(), want.stats[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    # brute force: the top 3 sequences by maximum (ties: lower id first), NaN above everything
    seqs, posts = zip(*_stream())
    ids, acts = torch.cat(seqs), torch.cat(posts)[:, :, 1:11]  # [S, T, N]
    seq_max = acts.amax(dim=1)
    for n in range(10):
        order = sorted(range(len(ids)), key=lambda i: (not seq_max[i, n].isnan(), -seq_max[i, n].nan_to_num().item(), ids[i].item()))[:3]
        assert got.top[0][n].tolist() == [ids[i].item() for i in order], n
        assert torch.equal(got.top[1][n], acts[order, :, n]) or seq_max[order, n].isnan().any()
    assert got.stats["max"][5].isnan() and got.stats["mean"][5].isnan() and not got.stats["mean"][:5].isnan().any()
    assert got.stats["skewness"][3].isnan() and (got.quantile[0] >= 0).sum() > 10  # constant neuron; bins filled


@pytest.mark.slow
@triton_cpu
def test_triton_kernels_match_on_ragged_batches():
    """Shapes that fill no power-of-two block (batches of 6, 7 and a last one of 3; 5 tokens), more
    slots than a batch has sequences, ids shuffled within a batch: the same records as the fused
    kernel and the torch ops, bit for bit."""
    s = RecorderSettings(top_k=9, random_k=4, quantile_k=3, seed=3)
    stream = dict(sizes=[6, 7, 6, 7, 6, 3], t=5, seed=5)
    counts, bounds, got = _run("triton", range(0, 12), s, **stream)
    for path in ("fused", "dense"):
        c, b, want = _run(path, range(0, 12), s, **stream)
        assert torch.equal(counts, c) and torch.equal(bounds, b), path
        for kind in ("top", "random", "quantile"):
            for u, v in zip(getattr(got, kind), getattr(want, kind)):
                assert _same(u, v), (path, kind)
        for k in ("mean", "variance", "skewness", "kurtosis", "max"):
            np.testing.assert_allclose(got.stats[k].numpy(), want.stats[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    assert (got.top[0][:, -1] >= 0).all() and (got.top[0][:, :9] >= 0).all()  # 35 sequences fill 9 slots


@pytest.mark.parametrize("path", ["fused", "dense", "torch", "triton"])
def test_zero_and_nan_maxima_rank_alike_on_every_path(path):
    """Sequences whose maximum is -0.0 or +0.0 (tanh GELU gives -0.0 below about -5.07) tie, the lower id
    first; a NaN of either sign ranks first. Every path (the numba kernel, both torch paths, Triton)
    keeps the brute-force top records."""
    if path == "triton" and not gpu_update.usable(torch.device("cpu")):
        pytest.skip("needs Triton in interpreter mode")
    g = torch.Generator().manual_seed(3)
    neg_nan = -torch.tensor(float("nan"))
    stream = []
    for i in range(3):
        x = -torch.rand(6, 4, 3, generator=g)  # [B, T, N]: all negative
        zero = torch.rand(6, generator=g) < 0.6
        x[zero, 1, 0] = torch.where(torch.rand(int(zero.sum()), generator=g) < 0.5, -0.0, 0.0)  # max ±0
        x[:, :, 1] = torch.where(torch.rand(6, 4, generator=g) < 0.5, -0.0, 0.0)  # every value ±0
        if i == 1:
            x[2, 3, 2], x[4, 0, 2] = neg_nan, float("nan")
        nbt = x.permute(2, 0, 1).contiguous()
        stream.append((torch.arange(6 * i, 6 * i + 6).flip(0) * 3 + 1, nbt.permute(1, 2, 0)))
    rec = LayerRecorder(0, torch.arange(3), 4, RecorderSettings(top_k=5, random_k=2, quantile_k=1, seed=1), "cpu",
                        path=path)
    for seq_ids, post in stream:
        rec.update(seq_ids, post)
    got = rec.finish()
    ids = torch.cat([s for s, _ in stream])
    seq_max = torch.cat([p for _, p in stream]).amax(dim=1)  # [S, N]
    for n in range(3):
        rank = lambda i: (not seq_max[i, n].isnan(), -seq_max[i, n].nan_to_num().item(), ids[i].item())  # noqa: E731
        want = [ids[i].item() for i in sorted(range(len(ids)), key=rank)[:5]]
        assert got.top[0][n].tolist() == want, (path, n)


# aten ops that make the host wait for a CUDA device (a scalar read, or an output sized by the data)
_WAITS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.nonzero.default", "aten.masked_select.default",
          "aten._unique2.default", "aten.unique_consecutive.default", "aten.equal.default",
          "aten.is_nonzero.default", "aten.repeat_interleave.Tensor", "aten.masked_scatter.default"}


class _Ops(TorchDispatchMode):
    """Counts the aten ops a step dispatches outside the Triton kernels (whose interpreter works
    through torch on the CPU), and the kernel launches."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    def launcher(self, kernel):
        ops = self.ops

        class Launch:
            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    with _disable_current_modes():
                        kernel[grid](*args, **kwargs)
                    ops["launch " + kernel.fn.__name__] += 1
                return run
        return Launch()


@triton_cpu
def test_triton_step_launches_two_kernels_per_layer_and_never_waits(monkeypatch):
    """What the GPU's speed rests on, checked where CI runs: a step of the Triton path dispatches,
    per recorded layer, two kernel launches and no torch compute beyond an output allocation (the
    sketch's boundaries add a few ops on refresh batches), and nothing that makes the host wait for
    the device: the one scalar read is the sequence-id check, on the host copy of the ids."""
    from benchmarks.bench_recording import random_model
    from nx_dagster.activations import Recorder
    from nx_dagster.model.gpt2 import GPT2Config

    monkeypatch.setenv("NX_RECORDER", "triton")
    model = random_model(GPT2Config(n_layer=3, n_head=2, n_embd=16, n_inner=8, n_positions=32, vocab_size=100),
                         "cpu", torch.float32)  # 8 neurons: the interpreter runs a program at a time
    rec = Recorder(model, "post_fix", [0, 2], 8, RecorderSettings(top_k=4, random_k=4, quantile_k=2))
    g = torch.Generator().manual_seed(0)
    kernels = gpu_update.load()
    for i in range(6):  # refresh batches 0, 1, 2, 4; others 3, 5
        seq_ids, token_ids = torch.arange(16 * i, 16 * i + 16), torch.randint(0, 100, (16, 8), generator=g)
        mode = _Ops()
        with monkeypatch.context() as patch:
            patch.setattr(kernels, "layer_stats", mode.launcher(kernels.layer_stats))
            patch.setattr(kernels, "merge", mode.launcher(kernels.merge))
            with mode:
                rec.step(seq_ids, token_ids)
        ops = mode.ops
        assert ops["launch layer_stats"] == 2 and ops["launch merge"] == 2, ops
        assert {op for op in ops if op in _WAITS} == {"aten._local_scalar_dense.default"}, ops
        assert ops["aten._local_scalar_dense.default"] == 1 and ops["aten.max.default"] == 1
        bare = _Ops()
        with bare:
            model(token_ids, "post_fix", layers=3, logits=False, neuron_major=True)
        extra = ops - bare.ops - collections.Counter({"launch layer_stats": 2, "launch merge": 2})
        views = {"aten.permute.default", "aten.alias.default", "aten.slice.Tensor", "aten.view.default",
                 "aten.reshape.default", "aten.unsqueeze.default"}
        compute = {op: c for op, c in extra.items() if op not in views}
        refresh = i in rec.recs[0]._REFRESH or i % 32 == 0
        # per layer: the maxima's buffer; on refresh batches ~a dozen small ops over the sketch's
        # counts ([N, buckets]), and on the first the shift; per step: the id check (max, scalar)
        assert sum(compute.values()) <= 2 + 2 * (13 if refresh else 1), (i, compute)


@triton_cpu
def test_triton_path_is_chosen_by_name_on_the_cpu(monkeypatch):
    monkeypatch.setenv("NX_RECORDER", "triton")
    assert choose_path(torch.device("cpu")) == "triton"
    monkeypatch.setenv("NX_RECORDER", "")
    assert choose_path(torch.device("cpu")) in ("fused", "torch")


def test_to_host_keeps_values_shapes_and_order():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ts = [torch.arange(6, device=dev).view(2, 3), torch.rand(4, 2, device=dev, dtype=torch.float64),
          torch.tensor([], device=dev), torch.arange(5, device=dev) * 2, torch.rand(3, 1000, device=dev)]
    for chunk in (64, 1 << 20):  # many chunks through the two staging buffers, and one
        out = to_host(ts, chunk_bytes=chunk)
        assert all(o.device.type == "cpu" and o.shape == t.shape and torch.equal(o, t.cpu()) for o, t in zip(out, ts))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_triton_path_matches_torch_ops(monkeypatch, tmp_path):
    """On the GPU the Triton kernels against the fixed-shape torch ops on the same activations: the
    same records bit for bit (float32 and bfloat16), moments to float rounding."""
    from nx_dagster.model import open_checkpoint
    from tests.checkpoints import build_checkpoint
    from tests.test_recorder import T as SEQ_LEN, batches, corpus

    assert choose_path(torch.device("cuda")) == "triton"
    model = open_checkpoint(str(build_checkpoint(tmp_path / "m", n_layer=2, n_embd=32, n_head=4))).load_model()
    ids, toks = corpus()
    s = RecorderSettings(top_k=7, random_k=6, quantile_k=3, seed=11)
    for dtype in (torch.float32, torch.bfloat16):
        m = model.to("cuda", dtype)
        for neurons in (None, range(20, 90)):
            got = record(m, batches(ids, toks, 32), "post_fix", [0, 1], SEQ_LEN, s, neurons)
            monkeypatch.setenv("NX_RECORDER", "dense")
            want = record(m, batches(ids, toks, 32), "post_fix", [0, 1], SEQ_LEN, s, neurons)
            monkeypatch.delenv("NX_RECORDER")
            for layer in (0, 1):
                a, b = got[layer], want[layer]
                for kind in ("top", "random", "quantile"):
                    for u, v in zip(getattr(a, kind), getattr(b, kind)):
                        assert torch.equal(u, v), (dtype, neurons, layer, kind)
                assert torch.equal(a.stats["max"], b.stats["max"]) and torch.equal(a.stats["boundaries"], b.stats["boundaries"])
                for k in ("mean", "variance", "skewness", "kurtosis"):
                    np.testing.assert_allclose(a.stats[k], b.stats[k], rtol=1e-4, atol=1e-6)


_COMPILE = """
import pathlib, subprocess, triton
from triton.backends.compiler import GPUTarget
from nx_dagster.activations import triton_kernels as k
ptr = lambda names, t: {n: '*' + t for n in names.split()}
nvdisasm = pathlib.Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin' / 'nvdisasm'
for fn, sig, consts in [
    (k.layer_stats, {**ptr('nbt', 'bf16'), **ptr('shift seq_max', 'fp32'), **ptr('sums vmax edges', 'fp64'),
                     **ptr('counts guess', 'i32'), 'B': 'i32', 'T': 'i32', 'N_BUCKETS': 'i32'},
     {'BLOCK_B': 32, 'BLOCK_T': 64}),
    (k.merge, {**ptr('nbt', 'bf16'), 'seq_max': '*fp32', **ptr('seq_ids salt', 'i64'), 'boundaries': '*fp64',
               'B': 'i32', 'T': 'i32', **{f'{s}_{p}': t for s in ('top', 'rnd', 'bin') for p, t in
               (('keys', '*i64'), ('acts', '*fp32'), ('floor', '*i64'))}, 'K_TOP': 'i32', 'K_RND': 'i32', 'K_BIN': 'i32'},
     {'BLOCK_B': 512, 'BLOCK_T': 64, 'BLOCK_K': 32, 'N_BINS': 5}),
]:
    sig = {a: sig.get(a, 'constexpr') for a in fn.arg_names}
    # as Triton's launcher specializes them: 16-byte aligned tensors, B = 512 and T = 64
    attrs = {(i,): [['tt.divisibility', 16]] for i, a in enumerate(fn.arg_names) if sig[a].startswith('*') or a in ('B', 'T')}
    out = triton.compile(triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                         target=GPUTarget('cuda', 90, 32))
    assert len(out.asm['cubin']) > 1000
    if nvdisasm.exists():  # no memory fence, no L1 invalidation (what an acquire-release atomic adds)
        path = pathlib.Path('kernel.cubin')
        path.write_bytes(out.asm['cubin'])
        sass = subprocess.run([str(nvdisasm), str(path)], capture_output=True, text=True, check=True).stdout
        assert 'MEMBAR' not in sass and 'CCTL' not in sass, fn.__name__
    print(fn.__name__, 'compiled')
"""


@pytest.mark.slow
@pytest.mark.skipif(gpu_update.load() is None, reason="needs Triton")
def test_triton_kernels_compile_for_hopper(tmp_path):
    """What the interpreter cannot show: both kernels go through Triton's real compiler down to an
    sm_90 (H100/H200) binary, in bfloat16 (a fresh process: this one runs Triton interpreted)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["layer_stats", "compiled", "merge", "compiled"]
