"""LLM client benchmark: requests/s against the local OpenAI-compatible server (tests/llm_server.py, run as
its own process) with a fixed 100 ms latency, at concurrency 1, 16 and 64, simulating a few hundred
neurons with `json_logprobs`; then the number of requests a rerun makes (must be 0). With
`--fault-rate 0.05` the server answers that share of requests with a random fault (non-JSON body, a
value missing, a value out of range, a refusal, a 500), and each line also says how many neurons'
scores came out NULL.

    python benchmarks/bench_llm.py [--neurons 300] [--latency 0.1] [--fault-rate 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nx_dagster.explain import (  # noqa: E402
    LLMClient, LLMSettings, Ledger, explain_neurons, pair_by_neuron, score_simulations, simulate, simulations_table,
)
from tests.llm_server import demo_neurons  # noqa: E402


def server_requests(base_url: str) -> int:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats") as r:
        return json.load(r)["requests"]


def run(pairs, base_url: str, ledger: Path, concurrency: int) -> tuple[float, int, int, float, int]:
    """(seconds, requests seen by the server, failed sequences, client CPU seconds, NULL scores)."""
    before = server_requests(base_url)
    client = LLMClient(LLMSettings(api_key="sk-bench-000000", base_url=base_url, concurrency=concurrency,
                                   timeout_s=30), Ledger(ledger))
    t0, cpu0 = time.perf_counter(), time.process_time()
    sims = simulate(pairs, "json_logprobs", client)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    null_scores = score_simulations(simulations_table(sims)).column("ev_correlation").null_count
    return elapsed, server_requests(base_url) - before, sum(s.failure_reason is not None for s in sims), cpu, \
        null_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=300)
    ap.add_argument("--serial-neurons", type=int, default=20, help="neurons simulated at concurrency 1")
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--fault-rate", type=float, default=0.0, help="share of requests the server answers badly")
    ap.add_argument("--concurrency", default="1,16,64")
    args = ap.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", "tests.llm_server", "--latency", str(args.latency),
                             "--fault-rate", str(args.fault_rate)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        base_url = proc.stdout.readline().strip()
        neurons = demo_neurons(args.neurons, n_sequences=4, length=64)
        pairs = pair_by_neuron(explain_neurons(neurons), neurons)
        with tempfile.TemporaryDirectory() as d:
            print(f"server latency {args.latency * 1000:.0f} ms; json_logprobs simulations, one request per sequence; "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            levels = [int(c) for c in args.concurrency.split(",")]
            for concurrency in levels:
                subset = pairs[:args.serial_neurons] if concurrency == 1 else pairs
                ledger = Path(d) / f"ledger-{concurrency}.sqlite"
                secs, sent, failed, cpu, nulls = run(subset, base_url, ledger, concurrency)
                print(f"concurrency {concurrency:3d}: {len(subset):4d} neurons, {sent:5d} requests in {secs:6.2f} s "
                      f"= {sent / secs:7.1f} requests/s  (ideal {concurrency / args.latency:5.0f}), "
                      f"client CPU {cpu / max(sent, 1) * 1000:4.1f} ms/request, failed sequences {failed}, "
                      f"NULL scores {nulls}")
            last = levels[-1]
            secs, sent, failed, _, nulls = run(pairs, base_url, Path(d) / f"ledger-{last}.sqlite", last)
            print(f"rerun:           {len(pairs):4d} neurons, {sent:5d} requests in {secs:6.2f} s "
                  f"(answered from the ledger; unusable replies re-asked), failed sequences {failed}, "
                  f"NULL scores {nulls}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
