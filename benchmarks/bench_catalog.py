"""Concurrent catalog writers: N processes record disjoint layers of a GPT-2-small-shaped model (random
weights) into one catalog, and each commit is timed against the compute of its partition.

One partition = one layer of one GELU variant: its activation_records, neuron_stats and
token_activation_summary rows, committed in one transaction (`write_activations`). Prints per N: the
median seconds of a partition's compute, of writing its Parquet files (before the commit, no lock held)
and of its commit (waiting for the writer lock, then the metadata transaction), commit / compute (the
issue's bound: <= 5 % at N = 4),
commits/s over the parallel phase, and the end-to-end seconds of that phase (setup — model and
sequences rows, written once by one process — is reported apart). The catalog and data root come from
the environment as for `nxd`: NX_CATALOG (a SQLite file, the default, or postgresql://...) and NX_HOME
(a folder or s3://...); the benchmark starts from an empty catalog for each N (a fresh sub-folder of
NX_HOME, and for PostgreSQL a fresh database per N when `--pg-admin-url` is given).

    python -m benchmarks.bench_catalog --writers 1,2,4 --sequences 256
    NX_CATALOG=postgresql://nx:pw@127.0.0.1:5432/nx NX_HOME=s3://bench/nx python -m benchmarks.bench_catalog
    python -m benchmarks.bench_catalog --pg-server   # starts a throw-away PostgreSQL (tests/pg_server.py)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}


def build_model(folder: Path, shape: dict) -> Path:
    from tests.checkpoints import build_checkpoint

    if not (folder / "model.safetensors").exists():
        build_checkpoint(folder, tokenizer_vocab=4096, **shape)
    return folder


def build_corpus(path: Path, n_sequences: int, seq_len: int) -> Path:
    """Plain text of about `n_sequences` sequences of `seq_len` tokens (a word is one or two tokens)."""
    import random

    rng = random.Random(0)
    words = "the cat sat on mat Paris is capital of France one two three four five six".split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(seq_len)) for _ in range(n_sequences)))
    return path


def _subject(env: dict, seq_len: int, max_sequences: int):
    from nx_dagster.corpus import CorpusSpec
    from nx_dagster.model import open_checkpoint
    from nx_dagster.subject import Subject

    return Subject(open_checkpoint(env["NX_MODEL"]), CorpusSpec(env["NX_CORPUS"], seq_len, max_sequences), "cpu")


def _timed_catalog():
    """The project's Catalog, with every write (replace_many) timed, and within it the Parquet files
    written before the commit (`writes.prewrite`, no lock held): commit = write - Parquet = the wait for
    the writer lock plus the transaction (delete, register the files, commit the metadata)."""
    from nx_dagster.storage import Catalog, writes

    class TimedCatalog(Catalog):
        commits: list[float] = []
        parquet: list[float] = []

        def replace_many(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return super().replace_many(*args, **kwargs)
            finally:
                self.commits.append(time.perf_counter() - t)

    prewrite = writes.prewrite

    def timed_prewrite(*args, **kwargs):
        t = time.perf_counter()
        try:
            return prewrite(*args, **kwargs)
        finally:
            TimedCatalog.parquet.append(time.perf_counter() - t)

    writes.prewrite = timed_prewrite  # this benchmark process's writes, all through TimedCatalog
    return TimedCatalog


def setup(env: dict, seq_len: int, max_sequences: int) -> float:
    from nx_dagster.stages.activations import write_model, write_sequences

    os.environ.update(env)
    t = time.perf_counter()
    catalog, s = _timed_catalog()(), _subject(env, seq_len, max_sequences)
    write_model(catalog, s)
    write_sequences(catalog, s)
    return time.perf_counter() - t


def writer(env: dict, layers: list[int], variant: str, seq_len: int, max_sequences: int, out) -> None:
    """Record each of `layers` as its own partition; send [(layer, compute_s, commit_s, parquet_s)]."""
    import torch

    from nx_dagster.activations import RecorderSettings
    from nx_dagster.stages.activations import write_activations

    torch.set_num_threads(1)  # N writers share the machine's cores
    os.environ.update(env)
    catalog, s = _timed_catalog()(), _subject(env, seq_len, max_sequences)
    rows = []
    for layer in layers:
        before, files = len(catalog.commits), len(catalog.parquet)
        meta = write_activations(catalog, s, [variant], [layer], RecorderSettings(batch_size=32))
        parquet = sum(catalog.parquet[files:])
        rows.append((layer, meta["seconds"], sum(catalog.commits[before:]) - parquet, parquet))
    out.put(rows)


def run(n: int, env: dict, n_layer: int, variant: str, seq_len: int, max_sequences: int) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        setup_s = pool.apply(setup, (env, seq_len, max_sequences))
    out = ctx.Queue()
    procs = [ctx.Process(target=writer, args=(env, list(range(i, n_layer, n)), variant, seq_len, max_sequences, out))
             for i in range(n)]
    t = time.perf_counter()
    for p in procs:
        p.start()
    rows = [r for _ in procs for r in out.get()]
    wall = time.perf_counter() - t
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a writer failed (exit {p.exitcode})")
    compute = statistics.median(r[1] for r in rows)
    commit = statistics.median(r[2] for r in rows)
    return {"writers": n, "partitions": len(rows), "setup_s": round(setup_s, 2), "compute_s": round(compute, 3),
            "parquet_s": round(statistics.median(r[3] for r in rows), 3),
            "commit_s": round(commit, 3), "commit_share": round(commit / compute, 4),
            "commit_max_s": round(max(r[2] for r in rows), 3), "commits_per_s": round(len(rows) / wall, 3),
            "end_to_end_s": round(wall, 2)}


def _fresh_catalog(base_env: dict, n: int, pg_admin: str | None, pg_server) -> dict:
    """A fresh NX_HOME sub-folder (and PostgreSQL database) for the run with `n` writers."""
    env = dict(base_env)
    env["NX_HOME"] = base_env["NX_HOME"].rstrip("/") + f"/n{n}-{int(time.time())}"
    if pg_server is not None:
        env["NX_CATALOG"] = pg_server.create_database()
    elif pg_admin:
        import psycopg2

        name = f"nx_bench_n{n}_{int(time.time())}"
        con = psycopg2.connect(pg_admin)
        con.autocommit = True
        con.cursor().execute(f'CREATE DATABASE "{name}"')
        con.close()
        env["NX_CATALOG"] = pg_admin.rsplit("/", 1)[0] + f"/{name}"
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writers", default="1,2,4")
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--layers", type=int, default=SMALL["n_layer"])
    ap.add_argument("--variant", default="post_fix")
    ap.add_argument("--pg-admin-url", help="a PostgreSQL URL allowed to CREATE DATABASE: one fresh catalog per N")
    ap.add_argument("--pg-server", action="store_true", help="start a throw-away PostgreSQL for the catalogs")
    ap.add_argument("--work", default=None, help="where the model and corpus are built (default: a temp folder)")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="nx-bench-catalog-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = build_model(work / "gpt2-small-random", {**SMALL, "n_layer": args.layers})
    corpus = build_corpus(work / "corpus.txt", args.sequences * 2, args.seq_len)
    base = {"NX_MODEL": str(ckpt), "NX_CORPUS": str(corpus), "NX_HOME": os.environ.get("NX_HOME", str(work / "nx")),
            **({"NX_CATALOG": os.environ["NX_CATALOG"]} if os.environ.get("NX_CATALOG") else {})}
    import contextlib

    with contextlib.ExitStack() as stack:
        server = None
        if args.pg_server:
            from tests.pg_server import running_server

            server = stack.enter_context(running_server())
        for n in (int(x) for x in args.writers.split(",")):
            env = _fresh_catalog(base, n, args.pg_admin_url, server)
            result = run(n, env, args.layers, args.variant, args.seq_len, args.sequences)
            where = ("postgresql" if env.get("NX_CATALOG", "").startswith("postgresql") else "sqlite") + \
                (" / s3" if env["NX_HOME"].startswith("s3://") else " / local")
            print(json.dumps({"catalog / data": where, **result}), flush=True)


if __name__ == "__main__":
    main()
