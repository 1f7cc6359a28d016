"""Scorers' cost and speed: per scorer, wall time for N neurons with the offline methods, and LLM requests,
prompt and completion tokens per neuron (from the ledger) against the local test server.

Records have the shape the pipeline stores for GPT-2: per neuron 20 top records (round-robin over the four
splits), 20 random and 25 quantile records of 64 tokens; neuron i fires on its own word. Simulation (the
2023 method: simulate the valid records, then correlate) is the baseline each scorer's time is divided by.
Times are medians of --repeats runs in this process.

    python benchmarks/bench_scorers.py [--neurons 1000] [--llm-neurons 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nx_dagster.explain import classify, explain_neurons, pair_by_neuron, score_simulations, simulate  # noqa: E402
from nx_dagster.explain import simulations_table  # noqa: E402
from nx_dagster.explain.judges import DETECTION, FUZZING  # noqa: E402
from nx_dagster.explain.ledger import Ledger  # noqa: E402
from nx_dagster.explain.llm import LLMClient, LLMSettings  # noqa: E402
from nx_dagster.explain.records import ActivationRecord, NeuronRecords  # noqa: E402

SEQ_LEN, VOCAB = 64, 400
SPLITS = ("train", "calibration", "valid", "test")


def synthetic_neurons(n: int) -> list[NeuronRecords]:
    out = []
    for neuron in range(n):
        word = f" w{neuron % VOCAB}"
        records = []
        for i in range(65):
            kind = "top" if i < 20 else "random" if i < 40 else "quantile"
            tokens = [f" w{(neuron * 31 + i * 7 + j * 13) % VOCAB}" for j in range(SEQ_LEN)]
            if kind != "random":
                tokens[(i * 5) % SEQ_LEN] = word
            acts = [4.0 if t == word else 0.01 * (j % 7) for j, t in enumerate(tokens)]
            split = SPLITS[i % 4] if kind == "top" else SPLITS[1 + i % 3] if kind == "random" else None
            records.append(ActivationRecord(neuron * 100 + i, tokens, acts, kind, split, rank=i % 20))
        out.append(NeuronRecords("bench", "post_fix", 0, neuron, records))
    return out


def scorers(neurons, explanations, judge, null_fraction: float = 0.0):
    """Each scorer as a call, classification scorers with `null_fraction` of the neurons given a null."""
    pairs = pair_by_neuron(explanations, neurons)
    return {
        "simulation": lambda: score_simulations(simulations_table(simulate(
            pairs, judge.name if judge.name != "logprob_free" else "json_logprobs", judge.client))),
        DETECTION: lambda: classify.classification_rows(DETECTION, pairs, judge, null_fraction=null_fraction),
        FUZZING: lambda: classify.classification_rows(FUZZING, pairs, judge, null_fraction=null_fraction),
        "intruder": lambda: classify.intruder_rows(neurons, judge),
    }


def offline(n: int, repeats: int) -> None:
    neurons = synthetic_neurons(n)
    explanations = explain_neurons(neurons, "token_lookup", None)
    runs = scorers(neurons, explanations, classify.Judge("token_lookup"), null_fraction=1.0)
    times = {}
    for name, run in runs.items():
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            samples.append(time.perf_counter() - t0)
        times[name] = statistics.median(samples)
    print(f"offline methods, {n:,} neurons, detection and fuzzing with a null for every neuron (median of {repeats}):")
    for name, t in times.items():
        print(f"  {name:11s} {t:7.2f} s  {n / t:9,.0f} neurons/s  {t / times['simulation']:.2f}x simulation")


def llm(n: int) -> None:
    from tests.llm_server import FakeLLMServer

    neurons = synthetic_neurons(n)
    explanations = explain_neurons(neurons, "token_lookup", None)
    print(f"LLM methods against the local test server, {n} neurons, per neuron (a null costs as much again):")
    with FakeLLMServer() as server, tempfile.TemporaryDirectory() as tmp:
        for judge_name in ("json_logprobs", "logprob_free"):
            for name in ("simulation", DETECTION, FUZZING, "intruder"):
                if name == "simulation" and judge_name == "logprob_free":
                    continue
                client = LLMClient(LLMSettings(api_key="x", base_url=server.base_url, concurrency=8),
                                   Ledger(Path(tmp) / f"{judge_name}-{name}.sqlite"))
                judge = classify.Judge(judge_name, client, "fake-model")
                run = scorers(neurons, explanations, judge)[name]
                t0 = time.perf_counter()
                run()
                seconds = time.perf_counter() - t0
                s = client.ledger.summary()
                print(f"  {name:11s} {judge_name:13s} requests {s['calls'] / n:6.1f}  prompt tokens "
                      f"{s['prompt_tokens'] / n:8,.0f}  completion tokens {s['completion_tokens'] / n:6,.0f}  "
                      f"({seconds:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=1000)
    ap.add_argument("--llm-neurons", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    offline(args.neurons, args.repeats)
    llm(args.llm_neurons)


if __name__ == "__main__":
    main()
