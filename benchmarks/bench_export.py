"""Files/s of `nxd export --format openai` for N neurons of a synthetic catalog (GPT-2 record shapes: 20 top,
20 random and 5×5 quantile records of 64 tokens, stats, a 20-token summary per neuron), written with 1 thread
(the baseline) and with --threads workers in the same run, then a rerun (every file skipped). With --s3 the
same against a local S3 server (moto's ThreadedMotoServer, no network).

    python benchmarks/bench_export.py [--neurons 10000] [--threads 16] [--s3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nx_dagster.interop.export import export_openai  # noqa: E402
from nx_dagster.interop.import_ import import_openai  # noqa: E402
from nx_dagster.storage import Catalog  # noqa: E402
from nx_dagster.storage.schema import rows_to_table  # noqa: E402

MODEL, CORPUS, SEQ, N_SEQ = "synthetic", "synthetic-corpus", 64, 4096


def build(home: Path, neurons: int, layers: int) -> Catalog:
    cat = Catalog(home)
    rng = np.random.default_rng(0)
    per = neurons // layers
    vocab = [f" w{i}" for i in range(500)]
    toks = rng.integers(0, 500, (N_SEQ, SEQ))
    seqs = pa.table({"model": [MODEL] * N_SEQ, "corpus": [CORPUS] * N_SEQ, "sequence_id": np.arange(N_SEQ),
                     "tokens": [[vocab[t] for t in row] for row in toks]})
    models = rows_to_table("models", [{"model": MODEL, "n_layer": layers, "n_neurons": per}])
    cat.replace_many([("models", models, {"model": MODEL}), ("sequences", seqs, {"model": MODEL})], "bench")
    kinds = ["top"] * 20 + ["random"] * 20 + ["quantile"] * 25
    quant = [None] * 40 + [q for q in range(5) for _ in range(5)]
    ranks = list(range(20)) * 2 + list(range(5)) * 5
    for layer in range(layers):
        n = per * len(kinds)
        acts = rng.standard_normal((n, SEQ)).astype(np.float32)
        rec = pa.table({"model": [MODEL] * n, "corpus": [CORPUS] * n, "gelu_variant": ["pre_fix"] * n,
                        "layer": np.full(n, layer, np.int32), "neuron": np.repeat(np.arange(per, dtype=np.int32), len(kinds)),
                        "kind": kinds * per, "quantile": pa.array(quant * per, pa.int32()), "rank": ranks * per,
                        "sequence_id": rng.integers(0, N_SEQ, n), "max_activation": acts.max(1),
                        "activations": pa.FixedSizeListArray.from_arrays(acts.reshape(-1), SEQ).cast(pa.list_(pa.float32()))})
        stats = pa.table({"model": [MODEL] * per, "corpus": [CORPUS] * per, "gelu_variant": ["pre_fix"] * per,
                          "layer": np.full(per, layer, np.int32), "neuron": np.arange(per, dtype=np.int32),
                          "mean": rng.standard_normal(per), "variance": rng.random(per), "skewness": rng.standard_normal(per),
                          "kurtosis": rng.standard_normal(per), "quantile_boundaries": [[0.1, 0.5, 1.0, 2.0]] * per})
        m = per * 20
        summ = pa.table({"model": [MODEL] * m, "corpus": [CORPUS] * m, "gelu_variant": ["pre_fix"] * m,
                         "layer": np.full(m, layer, np.int32), "neuron": np.repeat(np.arange(per, dtype=np.int32), 20),
                         "rank": list(range(20)) * per, "token": [vocab[i] for i in rng.integers(0, 500, m)],
                         "mean_activation": rng.random(m).astype(np.float32)})
        keys = {"model": MODEL, "layer": layer}
        cat.replace_many([("activation_records", rec, keys), ("neuron_stats", stats, keys),
                          ("token_activation_summary", summ, keys)], "bench")
    return cat


def timed(cat: Catalog, url: str, threads: int) -> tuple[float, dict]:
    with cat.session(read_only=True) as con:
        t0 = time.perf_counter()
        out = export_openai(con, url, ["pre_fix"], threads=threads, progress=False)
        return time.perf_counter() - t0, out


def report(label: str, cat: Catalog, url_of, threads: int, home_of) -> None:
    t1, o1 = timed(cat, url_of("one"), 1)
    tn, on = timed(cat, url_of("many"), threads)
    tr, orr = timed(cat, url_of("many"), threads)
    f = o1["written"]
    print(f"{label}: {f} files; 1 thread {f / t1:,.0f} files/s ({t1:.1f} s); {threads} threads "
          f"{on['written'] / tn:,.0f} files/s ({tn:.1f} s, {t1 / tn:.2f}x); rerun skipped {orr['skipped']} files "
          f"in {tr:.1f} s ({orr['skipped'] / tr:,.0f} files/s)", flush=True)
    # import the same files back into an empty catalog (`nxd import`): parse, check, stage, one commit per layer
    ti = time.perf_counter()
    out = import_openai(Catalog(home_of("imported")), url_of("many"), model="bench-import", threads=threads,
                        progress=False)
    ti = time.perf_counter() - ti
    print(f"{label}: import of those {f} files ({threads} threads): {f / ti:,.0f} files/s ({ti:.1f} s; "
          f"{out.get('rows', {}).get('activation_records', '?')} activation records)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--neurons", type=int, default=10_000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--s3", action="store_true", help="also export to a local moto S3 server")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cat = build(Path(tmp) / "home", a.neurons, a.layers)
        print(f"synthetic catalog: {a.neurons} neurons in {time.perf_counter() - t0:.1f} s", flush=True)
        report("local folder", cat, lambda name: str(Path(tmp) / name), a.threads, lambda n: Path(tmp) / n)
        if a.s3:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
            server = ThreadedMotoServer(port=0)
            server.start()
            host, port = server.get_host_and_port()
            os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                              AWS_ENDPOINT_URL=f"http://{host}:{port}")
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
            s3fs.S3FileSystem().mkdir("bench")
            try:
                report("local S3 (moto)", cat, lambda name: f"s3://bench/{name}", a.threads,
                       lambda n: Path(tmp) / f"s3-{n}")
            finally:
                server.stop()


if __name__ == "__main__":
    main()
