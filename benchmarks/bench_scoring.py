"""Scoring benchmark: 100,000 neurons' stored simulations scored by the vectorized batch scorer, against a
naive per-neuron loop (the reference `score_sequences`) on a subset, in the same run.

Each neuron has 5 top + 5 random valid sequences and 5 + 5 calibration sequences of 64 tokens (the
simulations table as the pipeline stores it), written to Parquet and read back with DuckDB.

    python benchmarks/bench_scoring.py [--neurons 100000] [--naive 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nx_dagster.explain import ScoredSequence, score_sequences, score_simulations  # noqa: E402
from nx_dagster.storage.schema import TABLES  # noqa: E402

LAYOUT = [("top", "valid")] * 5 + [("random", "valid")] * 5 + [("top", "calibration")] * 5 + \
    [("random", "calibration")] * 5


def synthetic_simulations(n_neurons: int, seq_len: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    per = len(LAYOUT)
    rows = n_neurons * per
    true = np.maximum(rng.standard_normal(rows * seq_len, dtype=np.float32) - 1.0, np.float32(-0.17))
    sim = rng.standard_normal(true.size, dtype=np.float32)
    sim += true * 3
    np.clip(sim, 0, 10, out=sim)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * seq_len)
    neuron = np.repeat(np.arange(n_neurons, dtype=np.int32), per)
    schema = TABLES["simulations"]
    cols = {
        "explanation_id": pa.array([f"x{i:08d}" for i in range(n_neurons)]).take(pa.array(neuron)),
        "model": pa.array(["gpt2"] * rows), "layer": pa.array(neuron // 3072), "neuron": pa.array(neuron % 3072),
        "gelu_variant": pa.array(["post_fix"] * rows), "simulator": pa.array(["json_logprobs"] * rows),
        "simulator_model": pa.array(["gpt-4o-mini"] * rows),
        "sequence_id": pa.array(np.arange(rows, dtype=np.int64)),
        "kind": pa.array([k for k, _ in LAYOUT] * n_neurons), "split": pa.array([s for _, s in LAYOUT] * n_neurons),
        "expected_activations": pa.ListArray.from_arrays(offsets, pa.array(sim)),
        "true_activations": pa.ListArray.from_arrays(offsets, pa.array(true)),
        "failure_reason": pa.nulls(rows, pa.string()),
    }
    return pa.table({f.name: cols[f.name].cast(f.type) for f in schema}, schema=schema)


def naive(table: pa.Table) -> list:
    """One neuron at a time, straight from the definitions."""
    by_id: dict[str, list[ScoredSequence]] = {}
    for r in table.to_pylist():
        by_id.setdefault(r["explanation_id"], []).append(
            ScoredSequence(r["kind"], r["split"], r["true_activations"], r["expected_activations"]))
    return [score_sequences(seqs) for seqs in by_id.values()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=100_000)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--naive", type=int, default=1000, help="neurons scored by the naive loop")
    args = ap.parse_args()
    per = len(LAYOUT)
    t0 = time.perf_counter()
    table = synthetic_simulations(args.neurons, args.seq_len)
    tokens = args.neurons * per * args.seq_len
    print(f"built {args.neurons:,} neurons, {table.num_rows:,} sequences, {tokens:,} tokens "
          f"in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "simulations.parquet"
        pq.write_table(table, path, row_group_size=200_000)
        del table
        t0 = time.perf_counter()
        stored = duckdb.sql(f"SELECT * FROM read_parquet('{path}')").to_arrow_table()  # as the catalog reads
        t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = score_simulations(stored)
    t_batch = time.perf_counter() - t0
    assert scores.num_rows == args.neurons
    subset = stored.slice(0, args.naive * per)
    t0 = time.perf_counter()
    slow = naive(subset)
    t_naive = (time.perf_counter() - t0) / args.naive * args.neurons
    fast = scores.slice(0, args.naive).column("ev_correlation").to_numpy()
    diff = float(np.max(np.abs(fast - np.array([s.ev_correlation for s in slow]))))
    print(f"read Parquet (DuckDB): {t_read:6.2f} s  (storage, not scoring)")
    print(f"batch scoring:       {t_batch:6.2f} s  = {args.neurons / t_batch:,.0f} neurons/s, "
          f"{tokens / t_batch / 1e6:,.1f} M tokens/s  (target < 10 s for 100,000 neurons)")
    print(f"naive loop:          {t_naive:6.2f} s  (extrapolated from {args.naive:,} neurons)")
    print(f"speed-up vs naive:   {t_naive / t_batch:6.1f}x   max |Δ ev_correlation| = {diff:.2e}")


if __name__ == "__main__":
    main()
