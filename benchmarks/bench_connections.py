"""Benchmark: weight-based connections on random weights of a GPT-2 shape.

    python benchmarks/bench_connections.py                 # GPT-2 small shape, 2 CPU threads
    python benchmarks/bench_connections.py --xl --device cuda   # GPT-2 XL shape (48 x 6400 x 1600)

Prints, measured in one run: time and peak memory of all-pairs neuron connections and of both token
tables, the size of the dense matrix they avoid, a naive dense baseline on a few layers (speed ratio),
and the cost of one `TokenSummary.update` per batch. Peak memory on the CPU is the resident set
sampled every 5 ms above the level after the weights were made; on CUDA, torch's peak allocation.
CPU seconds (all threads) are printed beside wall time: on a shared machine they show the work done.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nx_dagster.activations.token_summary import TokenSummary  # noqa: E402
from nx_dagster.connections import neuron_connection_rows, token_connection_rows  # noqa: E402

GIB = 1 << 30


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    """CPU time of this process (all threads): robust to other processes sharing the cores."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


class Peak:
    """Peak memory above the level at entry: sampled RSS on the CPU, max_memory_allocated on CUDA."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> "Peak":
        self.started, self.cpu_started = time.perf_counter(), cpu_seconds()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        self.seconds = time.perf_counter() - self.started
        self.cpu = cpu_seconds() - self.cpu_started
        self.extra = self.peak - self.base


def word_tokenizer(vocab: int):
    """Token strings without a 50k-token tokenizer file: a word-level tokenizer whose token i reads '<i>'."""
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({f"<{i}>": i for i in range(vocab)}, unk_token="<0>"))


def random_weights(n_layer: int, n: int, d: int, vocab: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    w = {"wte.weight": 0.02 * torch.randn(vocab, d, generator=gen, device=device),
         "ln_f.weight": 1 + 0.2 * torch.randn(d, generator=gen, device=device)}
    for l in range(n_layer):
        w[f"h.{l}.mlp.c_fc.weight"] = 0.02 * torch.randn(d, n, generator=gen, device=device)
        w[f"h.{l}.mlp.c_proj.weight"] = 0.02 * torch.randn(n, d, generator=gen, device=device)
        w[f"h.{l}.ln_2.weight"] = 1 + 0.2 * torch.randn(d, generator=gen, device=device)
    return w


def naive_neurons(w: dict[str, torch.Tensor], layers: int, k: int) -> None:
    """The direct way: the dense [L·N, L·N] matrix (earlier -> later layers only), then torch.topk per
    neuron, direction and sign (no deterministic tie-break: the cheapest possible dense baseline)."""
    w_out = torch.cat([w[f"h.{l}.mlp.c_proj.weight"] for l in range(layers)])  # [L·N, d]
    n = w["h.0.mlp.c_proj.weight"].shape[0]
    blocks = [w_out @ (w[f"h.{l}.ln_2.weight"][:, None] * w[f"h.{l}.mlp.c_fc.weight"]) for l in range(layers)]
    dense = torch.cat(blocks, 1)  # [L·N (source), L·N (target)]
    layer_of = torch.arange(layers * n, device=dense.device) // n
    valid = layer_of[:, None] < layer_of[None, :]
    for dim in (1, 0):  # along targets: downstream lists; along sources: upstream lists
        for largest, fill in ((True, float("-inf")), (False, float("inf"))):
            torch.topk(torch.where(valid, dense, fill), k, dim=dim, largest=largest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--xl", action="store_true", help="GPT-2 XL shape: 48 layers, 6400 neurons, 1600 dims")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--neurons", type=int, default=3072)
    p.add_argument("--dims", type=int, default=768)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target is 2 cores)")
    p.add_argument("--baseline-layers", type=int, default=2, help="layers for the naive dense baseline")
    p.add_argument("--skip-tokens", action="store_true")
    a = p.parse_args()
    if a.xl:
        a.layers, a.neurons, a.dims = 48, 6400, 1600
    torch.set_num_threads(a.threads)
    L, N, d, V, k, dev = a.layers, a.neurons, a.dims, a.vocab, a.k, a.device
    print(f"shape: {L} layers x {N} neurons x {d} dims, vocab {V}, k={k}, device {dev}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    w = random_weights(L, N, d, V, dev)
    print(f"weights: {sum(t.numel() * t.element_size() for t in w.values()) / GIB:.2f} GiB; "
          f"process RSS {rss_bytes() / GIB:.2f} GiB")

    with Peak(dev) as m:
        table = neuron_connection_rows(w, "bench", k=k, device=dev)
    dense = (L * N) ** 2 * 4
    pairs = L * (L - 1) // 2
    print(f"neuron_connections all pairs: {m.seconds:.1f} s wall ({m.cpu:.1f} CPU s) for {pairs} layer pairs "
          f"({m.seconds / pairs * 1000:.0f} ms/pair), {table.num_rows:,} rows; peak memory +{m.extra / GIB:.3f} GiB "
          f"vs dense {L * N}x{L * N} float32 matrix {dense / GIB:.1f} GiB (ratio {dense / max(m.extra, 1):.0f}x)")
    del table

    if not a.skip_tokens:
        with Peak(dev) as m:
            table = token_connection_rows(w, word_tokenizer(V), "bench", k=k, device=dev)
        dense_t = 2 * L * N * V * 4
        print(f"token_connections (input + output): {m.seconds:.1f} s wall ({m.cpu:.1f} CPU s), "
              f"{table.num_rows:,} rows; peak memory "
              f"+{m.extra / GIB:.3f} GiB vs dense [{L * N}, {V}] x 2 {dense_t / GIB:.1f} GiB "
              f"(ratio {dense_t / max(m.extra, 1):.0f}x)")
        del table

    b = min(a.baseline_layers, L)
    sub = {key: t for key, t in w.items() if not key.startswith("h.") or int(key.split(".")[1]) < b}
    with Peak(dev) as ours:
        neuron_connection_rows(sub, "bench", k=k, device=dev)
    with Peak(dev) as naive:
        naive_neurons(sub, b, k)
    print(f"naive dense baseline (full matrix + topk) on {b} layers: {naive.seconds:.2f} s, "
          f"+{naive.extra / GIB:.3f} GiB; tiled: {ours.seconds:.2f} s, +{ours.extra / GIB:.3f} GiB; speed ratio {naive.seconds / ours.seconds:.1f}x")

    summary = TokenSummary(N, V, torch.arange(4096), max_tokens=4096, device=dev)
    ids = torch.randint(0, V, (64, 64), device=dev)
    post = torch.randn(64, 64, N, device=dev)
    summary.update(ids, post)
    started = time.perf_counter()
    for _ in range(10):
        summary.update(ids, post)
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    per = (time.perf_counter() - started) / 10
    print(f"TokenSummary.update: {per * 1000:.1f} ms per 64x64-token batch of {N} neurons "
          f"({ids.numel() / per / 1e6:.2f} M tokens/s), state {summary.memory_bytes / 2**20:.0f} MiB per layer")
    print(f"process peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
