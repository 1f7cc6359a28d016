"""Recording overhead: the bare forward pass vs the full recording (all layers, one variant), same tokens.

Prints, per model shape: median seconds of each, their ratio, tokens/s; with --hf-baseline also
transformers' GPT2Model forward on the same weights and a naive recorder on it (`peers.py`); with
--memory the peak memory at two corpus sizes (fresh subprocesses: it does not grow with the corpus);
with --end-to-end `nxd run --stages activations` on the bundled model, on the CPU and on --device.

    python benchmarks/bench_recording.py                 # bundled model + GPT-2-small shape, CPU
    python benchmarks/bench_recording.py --device cuda --dtype bfloat16 --hf-baseline --end-to-end \
        --models gpt2-small:16384:512,gpt2-xl:2048:128   # name[:sequences[:batch size]]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import tempfile

import torch

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent.parent))  # run as a script too
from benchmarks.peers import NaivePeer, hf_twin
from nx_dagster.activations import Recorder, RecorderSettings
from nx_dagster.model.gpt2 import GPT2, Block, GPT2Config

SHAPES = {
    "gpt2-small": GPT2Config(n_layer=12, n_head=12, n_embd=768, n_inner=3072, n_positions=1024, vocab_size=50257),
    "gpt2-xl": GPT2Config(n_layer=48, n_head=25, n_embd=1600, n_inner=6400, n_positions=1024, vocab_size=50257),
}


def random_model(cfg: GPT2Config, device: str, dtype: torch.dtype) -> GPT2:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: (0.02 * torch.randn(*s, generator=g))  # noqa: E731
    d, n = cfg.n_embd, cfg.n_inner
    blocks = [Block(torch.ones(d), torch.zeros(d), r(3 * d, d), torch.zeros(3 * d), r(d, d), torch.zeros(d),
                    torch.ones(d), torch.zeros(d), r(n, d), r(n), r(d, n), torch.zeros(d)) for _ in range(cfg.n_layer)]
    return GPT2(cfg, r(cfg.vocab_size, d), r(cfg.n_positions, d), blocks, torch.ones(d), torch.zeros(d)).to(device, dtype)


def load(name: str, device: str, dtype: torch.dtype) -> GPT2:
    if name == "bundled":
        from nx_dagster.model import open_checkpoint

        return open_checkpoint("bundled").load_model(device, dtype)
    return random_model(SHAPES[name], device, dtype)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def batches(model: GPT2, n_seq: int, seq_len: int, bs: int, device: str):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (n_seq, seq_len), generator=g)
    return [(torch.arange(i, min(i + bs, n_seq), device=device), ids[i:i + bs].to(device)) for i in range(0, n_seq, bs)]


def time_pair(model: GPT2, data, seq_len: int, repeats: int, device: str, hf=None) -> dict:
    """Bare forward and recording step, interleaved batch by batch (so drift in the machine's speed
    hits both alike); the recording also pays for creating the recorder and for `finish`. Medians
    over `repeats` whole passes.
    With `hf` (transformers' GPT2Model, same weights) its forward pass is timed in the same loop."""
    layers = list(range(model.config.n_layer))
    bare, rec, fin, ratios, hf_s = [], [], [], [], []

    def timed(fn):
        """(seconds, result) of fn()."""
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        return time.perf_counter() - t, out

    settings = RecorderSettings(batch_size=len(data[0][0]))
    for _ in range(repeats):
        b = h = 0.0
        # creating the recorder (allocating its stores) is part of the recording's cost
        r, recorder = timed(lambda: Recorder(model, "post_fix", layers, seq_len, settings))
        for seq_ids, ids in data:
            b += timed(lambda: model(ids, "post_fix", layers=model.config.n_layer, logits=False))[0]
            r += timed(lambda: recorder.step(seq_ids, ids))[0]
            if hf is not None:
                with torch.inference_mode():
                    h += timed(lambda: hf(input_ids=ids))[0]
        f = timed(recorder.finish)[0]
        bare.append(b), rec.append(r + f), fin.append(f), ratios.append((r + f) / b), hf_s.append(h)
    tokens = sum(ids.numel() for _, ids in data)
    b, r = statistics.median(bare), statistics.median(rec)
    out = {"tokens": tokens, "bare_s": b, "record_s": r, "finish_s": statistics.median(fin),
           "ratio": statistics.median(ratios), "ratios": ratios, "bare_tok_s": tokens / b, "record_tok_s": tokens / r}
    if hf is not None:
        out["hf_tok_s"] = tokens / statistics.median(hf_s)
    return out


def time_passes(model: GPT2, data, seq_len: int, repeats: int, device: str, hf=None) -> dict:
    """On a GPU: whole passes, synchronized only at their ends, so queued batches overlap as they do
    in a real run: the bare forward, the same forward with the MLP neuron-major (the recorder's
    layout), the recording (recorder creation, steps, `finish` to host memory), and with `hf` transformers' bare forward and the naive peer (`peers.NaivePeer`).
    Sequence ids stay on the host, as the corpus reader hands them over; token ids on the device."""
    layers = list(range(model.config.n_layer))
    settings = RecorderSettings(batch_size=len(data[0][0]))
    host_ids = [seq_ids.cpu() for seq_ids, _ in data]

    def bare():
        for _, ids in data:
            model(ids, "post_fix", layers=model.config.n_layer, logits=False)

    def bare_neuron_major():  # the recorder's own forward without the recorder: what its layout costs
        for _, ids in data:
            model(ids, "post_fix", layers=model.config.n_layer, logits=False, neuron_major=True)

    runs = {"bare": bare, "bare_nm": bare_neuron_major}

    def recording():
        rec = Recorder(model, "post_fix", layers, seq_len, settings)
        for sid, (_, ids) in zip(host_ids, data):
            rec.step(sid, ids)
        return rec.finish()

    runs["record"] = recording
    if hf is not None:
        def hf_bare():
            with torch.inference_mode():
                for _, ids in data:
                    hf(input_ids=ids)

        def peer():
            p = NaivePeer(hf)
            for seq_ids, ids in data:
                p.step(seq_ids, ids)
            return p.finish()

        runs["hf"], runs["peer"] = hf_bare, peer
    secs: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            secs[name].append(time.perf_counter() - t)
    tokens = sum(ids.numel() for _, ids in data)
    med = {k: statistics.median(v) for k, v in secs.items()}
    ratios = [r / b for r, b in zip(secs["record"], secs["bare"])]
    out = {"tokens": tokens, "bare_s": med["bare"], "record_s": med["record"], "finish_s": float("nan"),
           "ratio": statistics.median(ratios), "ratios": ratios, "bare_tok_s": tokens / med["bare"],
           "record_tok_s": tokens / med["record"], "bare_nm_tok_s": tokens / med["bare_nm"]}
    if hf is not None:
        out["hf_tok_s"], out["peer_tok_s"] = tokens / med["hf"], tokens / med["peer"]
    return out


def recorder_kind(device: str) -> str:
    from nx_dagster.activations.recorder import choose_path

    return {"fused": "fused CPU kernel (numba)", "triton": "Triton kernels", "dense": "fixed-shape torch ops",
            "torch": "torch ops"}[choose_path(torch.device(device))]


def end_to_end(device: str, dtype: str) -> dict[str, float]:
    """Seconds of `nxd run --stages activations` on the bundled model and corpus, on the CPU and on
    `device`, each in a fresh data root (so both pay for the same work); run from the repository root."""
    out = {}
    for dev in ("cpu", device):
        with tempfile.TemporaryDirectory() as home:
            cmd = [sys.executable, "-m", "nxd", "run", "--stages", "activations", "--home", home,
                   "--device", dev, "--dtype", "float32" if dev == "cpu" else dtype]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)  # the project's Dagster instance, as users run it
            out[dev] = time.perf_counter() - t
    return out


def peak_memory(name: str, n_seq: int, args) -> float:
    """Peak RSS (MiB) of a fresh process that records `n_seq` sequences, or CUDA peak on GPU."""
    code = f"""
import resource, torch, json, sys
sys.path.insert(0, '.')
from benchmarks.bench_recording import load, batches
from nx_dagster.activations import RecorderSettings, record
m = load({name!r}, {args.device!r}, getattr(torch, {args.dtype!r}))
data = batches(m, {n_seq}, {args.seq_len}, {args.batch_size}, {args.device!r})
def gen():
    for b in data: yield b
record(m, gen(), 'post_fix', list(range(m.config.n_layer)), {args.seq_len}, RecorderSettings())
cuda = torch.cuda.max_memory_allocated() / 2**20 if {args.device!r}.startswith('cuda') else 0
print(json.dumps({{"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cuda": cuda}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="bundled,gpt2-small",
                   help="comma list of name[:sequences[:batch size]]; names: bundled, " + ", ".join(SHAPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--sequences", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory", action="store_true", help="also measure peak memory at two corpus sizes")
    p.add_argument("--hf-baseline", action="store_true",
                   help="also time transformers' GPT2Model forward on the same weights and, on a GPU, a naive "
                        "hook-based recorder on it (needs transformers)")
    p.add_argument("--end-to-end", action="store_true", help="also time `nxd run --stages activations` "
                   "on the bundled model, on the CPU and on --device")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    gpu = args.device.startswith("cuda")
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} seq_len={args.seq_len}")
    for spec in args.models.split(","):
        name, *size = spec.split(":")
        n_seq = int(size[0]) if size else args.sequences
        bs = int(size[1]) if len(size) > 1 else args.batch_size
        model = load(name, args.device, dtype)
        data = batches(model, n_seq, args.seq_len, bs, args.device)
        hf = hf_twin(model, data[0][1]) if args.hf_baseline else None
        timer = time_passes if gpu else time_pair
        timer(model, data[:2], args.seq_len, 1, args.device, hf)  # warm-up (compiles the kernels)
        r = timer(model, data, args.seq_len, args.repeats, args.device, hf)
        print(f"{name}: {r['tokens']:,} tokens, batch {bs} | bare forward {r['bare_s']:.3f}s ({r['bare_tok_s']:,.0f} tok/s) | "
              f"recording {r['record_s']:.3f}s ({r['record_tok_s']:,.0f} tok/s, finish {r['finish_s']:.3f}s) | "
              f"ratio {r['ratio']:.3f}x (median of {args.repeats}: {', '.join(f'{x:.3f}' for x in r['ratios'])}) "
              f"| recorder: {recorder_kind(args.device)}")
        if "bare_nm_tok_s" in r:
            print(f"{name}: our bare forward with the MLP neuron-major (the recorder's layout, no recording) "
                  f"{r['bare_nm_tok_s']:,.0f} tok/s: {r['bare_tok_s'] / r['bare_nm_tok_s']:.3f}x the bare pass's time")
        if hf is not None:
            print(f"{name}: transformers GPT2Model forward (same weights) {r['hf_tok_s']:,.0f} tok/s: "
                  f"recording runs at {r['record_tok_s'] / r['hf_tok_s']:.2f}x its speed")
        if "peer_tok_s" in r:
            print(f"{name}: naive peer (transformers + per-layer top-k hook) {r['peer_tok_s']:,.0f} tok/s: "
                  f"recording runs at {r['record_tok_s'] / r['peer_tok_s']:.2f}x its speed")
        if args.memory:
            args.sequences, args.batch_size = n_seq, bs
            small, large = n_seq, n_seq * 4
            m1, m2 = peak_memory(name, small, args), peak_memory(name, large, args)
            key = "cuda" if gpu else "rss"
            print(f"{name}: peak {key} memory {m1[key]:,.0f} MiB at {small} sequences, {m2[key]:,.0f} MiB at {large} "
                  f"sequences (ratio {m2[key] / m1[key]:.3f})")
        del model, data, hf
    if args.end_to_end:
        e = end_to_end(args.device, args.dtype)
        print(f"nxd run --stages activations, bundled model: cpu {e['cpu']:.1f}s, {args.device} {e[args.device]:.1f}s "
              f"({e['cpu'] / e[args.device]:.2f}x faster)")


if __name__ == "__main__":
    main()
