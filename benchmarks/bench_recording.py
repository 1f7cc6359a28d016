"""Recording overhead: the bare forward pass vs the full recording (all layers, one variant), same tokens.

Prints, per model shape: median seconds of each, their ratio, tokens/s; and peak memory of the
recording at two corpus sizes (run in fresh subprocesses) to show it does not grow with the corpus.

    python benchmarks/bench_recording.py                 # bundled model + GPT-2-small shape, CPU
    python benchmarks/bench_recording.py --device cuda --dtype bfloat16 --sequences 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

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


def hf_twin(model: GPT2, ids: torch.Tensor):
    """transformers' GPT2Model with the same weights (Conv1D keeps [in, out]: transposed back), as an
    outside baseline for the bare forward pass; checked to compute the same hidden states on `ids`."""
    from transformers import GPT2Config as HFConfig, GPT2Model

    c = model.config
    hf = GPT2Model(HFConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_inner=c.n_inner,
                            n_positions=c.n_positions, vocab_size=c.vocab_size, activation_function="gelu_new",
                            layer_norm_epsilon=c.layer_norm_epsilon, bos_token_id=0, eos_token_id=0))
    sd = {"wte.weight": model.wte, "wpe.weight": model.wpe, "ln_f.weight": model.ln_f_w, "ln_f.bias": model.ln_f_b}
    for i, b in enumerate(model.blocks):
        p = f"h.{i}."
        sd.update({p + "ln_1.weight": b.ln_1_w, p + "ln_1.bias": b.ln_1_b, p + "ln_2.weight": b.ln_2_w,
                   p + "ln_2.bias": b.ln_2_b, p + "attn.c_attn.weight": b.attn_w.T, p + "attn.c_attn.bias": b.attn_b,
                   p + "attn.c_proj.weight": b.attn_proj_w.T, p + "attn.c_proj.bias": b.attn_proj_b,
                   p + "mlp.c_fc.weight": b.fc_w.T, p + "mlp.c_fc.bias": b.fc_b,
                   p + "mlp.c_proj.weight": b.proj_w.T, p + "mlp.c_proj.bias": b.proj_b})
    missing, unexpected = hf.load_state_dict({k: v.float().cpu() for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing), missing
    hf = hf.eval().to(model.device, model.dtype)
    with torch.inference_mode():
        theirs = hf(input_ids=ids).last_hidden_state.float()
        ours = F.layer_norm(model(ids, "post_fix", logits=False), (c.n_embd,), model.ln_f_w, model.ln_f_b,
                            c.layer_norm_epsilon).float()
    err = (theirs - ours).abs().max().item()
    tol = 1e-3 if model.dtype == torch.float32 else 0.1
    assert err < tol, f"transformers twin differs from the model by {err}"
    return hf


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


def recorder_kind(device: str) -> str:
    from nx_dagster.activations import cpu_kernel

    return "fused CPU kernel (numba)" if device == "cpu" and cpu_kernel.available() else "torch ops"


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
    p.add_argument("--models", default="bundled,gpt2-small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--sequences", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory", action="store_true", help="also measure peak memory at two corpus sizes")
    p.add_argument("--hf-baseline", action="store_true",
                   help="also time transformers' GPT2Model forward on the same weights (needs transformers)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} seq_len={args.seq_len}")
    for name in args.models.split(","):
        model = load(name, args.device, dtype)
        data = batches(model, args.sequences, args.seq_len, args.batch_size, args.device)
        hf = hf_twin(model, data[0][1]) if args.hf_baseline else None
        time_pair(model, data[:1], args.seq_len, 1, args.device, hf)  # warm-up
        r = time_pair(model, data, args.seq_len, args.repeats, args.device, hf)
        print(f"{name}: {r['tokens']:,} tokens | bare forward {r['bare_s']:.3f}s ({r['bare_tok_s']:,.0f} tok/s) | "
              f"recording {r['record_s']:.3f}s ({r['record_tok_s']:,.0f} tok/s, finish {r['finish_s']:.3f}s) | "
              f"ratio {r['ratio']:.3f}x (median of {args.repeats}: {', '.join(f'{x:.3f}' for x in r['ratios'])}) "
              f"| recorder: {recorder_kind(args.device)}")
        if hf is not None:
            print(f"{name}: transformers GPT2Model forward (same weights, same loop) {r['hf_tok_s']:,.0f} tok/s: "
                  f"recording runs at {r['record_tok_s'] / r['hf_tok_s']:.2f}x its speed")
        if args.memory:
            small, large = args.sequences, args.sequences * 4
            m1, m2 = peak_memory(name, small, args), peak_memory(name, large, args)
            key = "cuda" if args.device.startswith("cuda") else "rss"
            print(f"{name}: peak {key} memory {m1[key]:,.0f} MiB at {small} sequences, {m2[key]:,.0f} MiB at {large} "
                  f"sequences (ratio {m2[key] / m1[key]:.3f})")


if __name__ == "__main__":
    main()
