"""`nxd export`: write a catalog's tables to a local folder or any fsspec URL (`s3://...`).

`openai` format: the published layout (openai_format.py), one folder per GELU variant (`URL/pre_fix/...`,
`URL/post_fix/...`) and `URL/manifest.json` (release, model, corpus, variants, counts). `parquet` format:
one Parquet file per table (`URL/{table}.parquet`, the model's rows, streamed in batches).

Restartable: each file is written whole (local: to a temporary name, then renamed; object stores: one PUT),
so a file at its final name is complete; a rerun lists the target once and skips every file that is there
(when the manifest names the same model, corpus, release and catalog snapshot) or whose size equals what it
would write (otherwise). Files are written by `threads` workers. A target that is neither empty nor an
earlier export (no manifest.json) is refused before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import duckdb
import fsspec
from tqdm import tqdm

from nx_dagster.errors import NxInputError
from nx_dagster.interop import openai_format as fmt
from nx_dagster.interop.export_queries import layer_data, pick
from nx_dagster.vocab import N_QUANTILE_BINS, QUANTILE, RANDOM, TOP

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT_NAME = "openai-neuron-explainer"


class Target:
    """A folder on a local disk or an object store, written file by file, atomically."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.sizes: dict[str, int] = {}

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def check(self) -> None:
        """Refuse a non-empty folder that is not an earlier export; remember the sizes of what is there."""
        try:
            found = self.fs.find(self.root, detail=True) if self.fs.exists(self.root) else {}
        except OSError as e:
            raise NxInputError(f"export URL {self.url!r}", f"cannot be listed ({e})", "check the URL and credentials") from e
        self.sizes = {p.rstrip("/"): int(info.get("size") or 0) for p, info in found.items()}
        for p in [p for p in self.sizes if p.rsplit("/", 1)[-1].startswith(".") and p.endswith(".tmp")]:
            self.fs.rm(p)  # a killed writer's temporary file
            del self.sizes[p]
        if self.sizes and self.path(MANIFEST) not in self.sizes:
            raise NxInputError(f"export URL {self.url!r}", f"is not empty ({len(self.sizes)} files) and is not an earlier "
                               "export (no manifest.json)", "export to an empty or new folder, or to an earlier export's folder")

    def read_manifest(self) -> dict:
        try:
            return json.loads(self.fs.cat_file(self.path(MANIFEST))) if self.path(MANIFEST) in self.sizes else {}
        except (OSError, ValueError):
            return {}

    def write(self, rel: str, data: bytes) -> bool:
        """Write one file unless it is already complete. Returns True when written."""
        path = self.path(rel)
        if self.sizes.get(path) == len(data):
            return False
        parent = path.rsplit("/", 1)[0]
        if self.local:
            os.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)
        return True


def neuron_kinds(neuron: int, data: dict) -> list[str]:
    """The kinds of file the catalog holds for one neuron (what `neuron_files` writes)."""
    return [k for k in fmt.KINDS if neuron in data["stats" if k == "records" else k]]


def neuron_files(layer: int, neuron: int, data: dict, last_layer: int) -> dict[str, bytes]:
    """The files of one neuron (only the kinds the catalog holds for it), path → bytes."""
    out = {}
    stats = data["stats"].get(neuron)
    if stats:
        s = stats[0]
        recs = data["records"].get(neuron, [])
        sel = lambda kind, q=None: [(r["tokens"], r["activations"]) for r in recs  # noqa: E731
                                    if r["kind"] == kind and (q is None or r["quantile"] == q)]
        bins = [sel(QUANTILE, q) for q in range(N_QUANTILE_BINS)]
        obj = fmt.neuron_record(layer, neuron, sel(TOP), sel(RANDOM), bins, s["quantile_boundaries"],
                                s["mean"], s["variance"], s["skewness"], s["kurtosis"])
        out[fmt.rel_path("records", layer, neuron)] = fmt.dumps(obj)
    if neuron in data["explanations"]:
        obj = fmt.simulation_results(layer, neuron, data["explanations"][neuron])
        out[fmt.rel_path("explanations", layer, neuron)] = fmt.dumps(obj) + b"\n"
    if neuron in data["token_activations"]:
        pairs = [(r["token"], r["mean_activation"]) for r in data["token_activations"][neuron]]
        out[fmt.rel_path("token_activations", layer, neuron)] = fmt.dumps(fmt.token_lookup_summary(pairs))
    if neuron in data["token_weights"]:
        sides: dict = {}
        for r in data["token_weights"][neuron]:
            sides.setdefault((r["direction"], r["sign"]), []).append((r["token"], r["weight"]))
        out[fmt.rel_path("token_weights", layer, neuron)] = fmt.dumps(fmt.weight_summary(sides))
    if neuron in data["neurons"]:
        dirs: dict = {"upstream": {}, "downstream": {}}
        for r in data["neurons"][neuron]:
            dirs[r["direction"]].setdefault(r["sign"], []).append((r["other_layer"], r["other_neuron"], r["weight"]))
        up = dirs["upstream"] if layer > 0 else None
        down = dirs["downstream"] if layer < last_layer else None
        out[fmt.rel_path("neurons", layer, neuron)] = fmt.dumps(fmt.related_neurons(up, down))
    return out


def export_openai(con: duckdb.DuckDBPyConnection, url: str, variants: list[str], model: str | None = None,
                  corpus: str | None = None, release: str | None = None, layers: list[int] | None = None,
                  neurons: int | None = None, threads: int = 16, progress: bool = True) -> dict:
    """Export to `url`; `con` has the catalog attached and selected (a release's snapshot works the same).
    `neurons` limits each layer to its first N neurons. Returns the manifest (with `written`/`skipped`)."""
    model, corpus, n_layer, n_neurons = pick(con, model, corpus)
    target = Target(url)
    target.check()
    snapshot = con.execute("SELECT max(snapshot_id) FROM nx.snapshots()").fetchone()[0]
    manifest = {"format": FORMAT_NAME, "release": release, "model": model, "corpus": corpus, "variants": variants,
                "n_layer": n_layer, "n_neurons": n_neurons, "snapshot": snapshot, "complete": False, "counts": {}}
    previous = target.read_manifest()
    # the same catalog state as the export found there: a file at its final name is complete (written whole)
    same = {k: previous.get(k) for k in ("model", "corpus", "snapshot", "release")} == \
        {k: manifest[k] for k in ("model", "corpus", "snapshot", "release")}
    target.write(MANIFEST, json.dumps(manifest, indent=1).encode())
    layers = list(range(n_layer)) if layers is None else layers
    written = skipped = 0
    # on a terminal the bar redraws in place; into a log (no TTY) one line every 10 s is enough
    bar = tqdm(desc=f"export {url}", unit="file", disable=not progress,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for variant in variants:
            counts = manifest["counts"].setdefault(variant, {k: 0 for k in fmt.KINDS})
            for layer in layers:
                data = layer_data(con, model, corpus, variant, layer)
                ids = sorted(set().union(*(d.keys() for d in data.values())))[:neurons]

                def one(n: int, variant=variant, data=data, layer=layer):
                    if same:
                        rels = [fmt.rel_path(k, layer, n) for k in neuron_kinds(n, data)]
                        if all(target.path(f"{variant}/{r}") in target.sizes for r in rels):
                            return dict.fromkeys(rels), [False] * len(rels)
                    files = neuron_files(layer, n, data, n_layer - 1)
                    return files, [target.write(f"{variant}/{rel}", b) for rel, b in files.items()]

                for files, done in pool.map(one, ids):
                    for rel in files:
                        counts[next(k for k, d in fmt.KINDS.items() if rel.startswith(d + "/"))] += 1
                    written += sum(done)
                    skipped += len(done) - sum(done)
                    bar.update(len(done))
    bar.close()
    manifest.update(complete=True, exported_at=datetime.now(timezone.utc).isoformat())
    target.sizes.pop(target.path(MANIFEST), None)
    target.write(MANIFEST, json.dumps(manifest, indent=1).encode())
    log.info("exported %s: %d files written, %d already complete", url, written, skipped)
    return {**manifest, "written": written, "skipped": skipped}


def export_parquet(con: duckdb.DuckDBPyConnection, url: str, variants: list[str], model: str | None = None,
                   corpus: str | None = None, tables: list[str] | None = None) -> dict:
    """One Parquet file per table with the model's rows (`gelu_variant` in `variants` where the table has it)."""
    import pyarrow.parquet as pq

    from nx_dagster.storage.schema import DATA_TABLES

    model, corpus, _, _ = pick(con, model, corpus)
    target = Target(url)
    target.check()
    counts = {}
    for table in tables or [t for t in DATA_TABLES if t != "llm_calls"]:  # (releases describe the catalog)
        cols = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        where, params = "model = ?", [model]
        if "gelu_variant" in cols:
            where += f" AND gelu_variant IN ({', '.join('?' * len(variants))})"
            params += variants
        reader = con.execute(f"SELECT * FROM {table} WHERE {where}", params).fetch_record_batch()
        path = target.path(f"{table}.parquet")
        target.fs.makedirs(target.root, exist_ok=True)
        with target.fs.open(path, "wb") as fh, pq.ParquetWriter(fh, reader.schema) as w:
            n = 0
            for batch in reader:
                w.write_batch(batch)
                n += batch.num_rows
        counts[table] = n
    manifest = {"format": "parquet", "model": model, "corpus": corpus, "variants": variants, "counts": counts,
                "complete": True, "exported_at": datetime.now(timezone.utc).isoformat()}
    target.sizes.pop(target.path(MANIFEST), None)
    target.write(MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest
