"""`nxd import`: read files in the published OpenAI layout (a dataset root, an `nxd export` root, or one
layer folder such as `.../collated-activations/3`; local, `https://` or `s3://`) into the tables as
`pre_fix` lineage, with each row's file URL in `source`.

Two phases, so bad input changes nothing and a killed import resumes:
1. parse: every expected file of every layer is read (in `threads` workers) and checked; each layer's rows are
   staged as Parquet under NX_HOME/staging/import-<key>/layer-N with a `parsed` marker. A malformed file
   stops here (NxInputError naming the file and field) before any table changes. Known missing files are
   counted per kind and reported, never fatal.
2. commit: each layer is one transaction (its partitions of every table replaced; excerpts already in
   `sequences` are not inserted twice), then marked `committed`. A rerun skips committed layers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
from tqdm import tqdm

from nx_dagster.errors import NxInputError
from nx_dagster.interop.import_rows import PUBLISHED, VARIANT, NeuronRows
from nx_dagster.interop.openai_format import KINDS, Reader, rel_path
from nx_dagster.storage import Catalog
from nx_dagster.storage.schema import rows_to_table

log = logging.getLogger(__name__)
DEFAULT_MODEL = "openai-gpt2-small"
ADDERS = {"records": "add_record", "explanations": "add_explanations", "neurons": "add_neurons",
          "token_activations": "add_token_activations", "token_weights": "add_token_weights"}


def resolve(url: str) -> tuple[str, list[int] | None, dict]:
    """(dataset root URL, the one layer if `url` is a layer folder, the export manifest or {})."""
    url = url.rstrip("/")
    for sub in KINDS.values():
        m = re.fullmatch(rf"(.*)/{re.escape(sub)}/(\d+)", url)
        if m:
            return m.group(1), [int(m.group(2))], _manifest(m.group(1))
    manifest = _manifest(url)
    if manifest.get("format") == "parquet":
        raise NxInputError(f"import URL {url!r}", "is a Parquet export (`nxd export --format parquet`)",
                           "import an export in the OpenAI layout (`nxd export --format openai`)")
    if manifest.get("variants"):  # an `nxd export` root: its pre_fix folder is the published-lineage data
        if VARIANT not in manifest["variants"]:
            raise NxInputError(f"import URL {url!r}", f"is an export of {manifest['variants']} only",
                               "import an export that holds pre_fix (published data is pre_fix lineage)")
        return f"{url}/{VARIANT}", None, manifest
    return url, None, manifest or _manifest(url.rsplit("/", 1)[0])


def _manifest(url: str) -> dict:
    try:
        with fsspec.open(f"{url}/manifest.json", "rb") as fh:
            return json.loads(fh.read())
    except (FileNotFoundError, OSError, ValueError):
        return {}


def _shape(root: str, manifest: dict, con, model: str, shape: tuple[int, int] | None) -> tuple[int, int]:
    """(n_layer, n_neurons): given, from the export manifest, from a listing, or from the model's row."""
    if shape:
        return shape
    if manifest.get("n_layer"):
        return int(manifest["n_layer"]), int(manifest["n_neurons"])
    fs, path = fsspec.core.url_to_fs(f"{root}/{KINDS['records']}")
    try:
        layers = sorted(int(p.rstrip("/").rsplit("/", 1)[-1]) for p in fs.ls(path, detail=False)
                        if p.rstrip("/").rsplit("/", 1)[-1].isdigit())
        files = fs.ls(f"{path}/{layers[0]}", detail=False)
        neurons = [int(Path(p).stem) for p in files if Path(p).stem.isdigit()]
        return layers[-1] + 1, max(neurons) + 1
    except (OSError, IndexError, ValueError, NotImplementedError):
        row = con.execute("SELECT n_layer, n_neurons FROM models WHERE model = ?", [model]).fetchone()
        if row:
            return row[0], row[1]
    raise NxInputError(f"import URL {root!r}", "has no manifest.json and its layers cannot be listed",
                       "give the shape with --shape LAYERSxNEURONS (GPT-2 small: 12x3072, XL: 48x6400)")


def _parse_layer(url: str, layer: int, n_neurons: int, model: str, corpus: str, pool, missing: dict) -> NeuronRows:
    rows = NeuronRows(model, corpus, layer, n_neurons)
    fs, base = fsspec.core.url_to_fs(url)
    kinds = ("records", "explanations", "neurons", "token_activations", "token_weights")
    present = {k: _listing(fs, f"{base}/{KINDS[k]}/{layer}") for k in kinds}

    def read(job):
        kind, neuron = job
        rel = rel_path(kind, layer, neuron)
        src = f"{url}/{rel}"
        if present[kind] is not None and rel.rsplit("/", 1)[-1] not in present[kind]:
            return job, src, None  # known missing from the folder's listing: no request
        try:
            return job, src, fs.cat_file(f"{base}/{rel}")  # one GET (fsspec.open would HEAD first)
        except FileNotFoundError:
            return job, src, None

    jobs = [(k, n) for n in range(n_neurons) for k in kinds]
    for (kind, neuron), src, data in pool.map(read, jobs):
        if data is None:
            missing[kind] = missing.get(kind, 0) + 1
            continue
        rd = Reader(src)
        getattr(rows, ADDERS[kind])(rd, rd.load(data, jsonl=kind == "explanations"), neuron, src)
    return rows


def _listing(fs, folder: str) -> set[str] | None:
    """File names in `folder` (empty if it does not exist), or None where the filesystem cannot list
    (https://, where a folder URL is not a listing): then each file is simply requested."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & {"http", "https"}:
        return None
    try:
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)}
    except FileNotFoundError:
        return set()
    except (NotImplementedError, OSError, ValueError):
        return None


def import_openai(catalog: Catalog, url: str, model: str = DEFAULT_MODEL, corpus: str = PUBLISHED,
                  threads: int = 16, progress: bool = True, shape: tuple[int, int] | None = None) -> dict:
    """Import `url`; returns counts: layers imported / already there, rows per table, missing files per kind."""
    with catalog.session() as con:
        return _import(catalog, con, url, model, corpus, threads, progress, shape)


def _import(catalog: Catalog, con, url: str, model: str, corpus: str, threads: int, progress: bool, shape) -> dict:
    root, only, manifest = resolve(url)
    n_layer, n_neurons = _shape(root, manifest, con, model, shape)
    existing = con.execute("SELECT n_layer, n_neurons, checkpoint_sha256 FROM models WHERE model = ?",
                           [model]).fetch_arrow_table().to_pylist()
    if existing and existing[0]["checkpoint_sha256"]:
        raise NxInputError(f"--model {model!r}", "is a model computed from a checkpoint in this catalog",
                           "import under a new --model name (default openai-gpt2-small)")
    if existing and (existing[0]["n_layer"], existing[0]["n_neurons"]) != (n_layer, n_neurons):
        raise NxInputError(f"import URL {url!r}", f"has {n_layer} layers × {n_neurons} neurons, but model {model!r} "
                           f"in the catalog has {existing[0]['n_layer']} × {existing[0]['n_neurons']}",
                           "import under another --model name")
    layers = only or list(range(n_layer))
    if any(not 0 <= l < n_layer for l in layers):
        raise NxInputError(f"import URL {url!r}", f"names layer {layers[0]}, but the data has {n_layer} layers",
                           "check the URL")
    key = hashlib.sha256(json.dumps([root, model, corpus]).encode()).hexdigest()[:16]
    stage = catalog.local / "imports" / key
    missing: dict[str, int] = {}
    counts: dict[str, int] = {}
    bar = tqdm(desc=f"import {url}", unit="layer", total=2 * len(layers), disable=not progress)
    with ThreadPoolExecutor(max(1, threads)) as pool:  # phase 1: parse and check everything
        for layer in layers:
            folder = stage / f"layer-{layer}"
            if not (folder / "parsed").exists():
                layer_missing: dict[str, int] = {}
                rows = _parse_layer(root, layer, n_neurons, model, corpus, pool, layer_missing)
                folder.mkdir(parents=True, exist_ok=True)
                for table, rs in rows.rows.items():
                    pq.write_table(rows_to_table(table, rs), folder / f"{table}.parquet")
                (folder / "parsed").write_text(json.dumps(layer_missing))
            for k, v in json.loads((folder / "parsed").read_text()).items():
                missing[k] = missing.get(k, 0) + v
            bar.update()
    models_row = rows_to_table("models", [{"model": model, "n_layer": n_layer, "n_neurons": n_neurons, "source": root}])
    done = 0
    for layer in layers:  # phase 2: one transaction per layer
        folder = stage / f"layer-{layer}"
        if (folder / "committed").exists():
            done += 1
            bar.update()
            continue
        src = lambda t: f"read_parquet('{folder / (t + '.parquet')}')"  # noqa: E731
        q = lambda s: "'" + s.replace("'", "''") + "'"  # noqa: E731
        new_seqs = (f"(SELECT * FROM {src('sequences')} WHERE sequence_id NOT IN (SELECT sequence_id FROM sequences "
                    f"WHERE model = {q(model)} AND corpus = {q(corpus)}))")
        lk = {"model": model, "layer": layer}
        vk = {**lk, "corpus": corpus, "gelu_variant": VARIANT}
        sk = {**lk, "gelu_variant": VARIANT, "explanation_gelu_variant": VARIANT, "explainer": PUBLISHED,
              "simulator": PUBLISHED}
        catalog.replace_many(([] if existing else [("models", models_row, {"model": model})]) + [
            ("sequences", new_seqs, {"model": model, "corpus": corpus, "sequence_id": []}),
            ("activation_records", src("activation_records"), vk), ("neuron_stats", src("neuron_stats"), vk),
            ("token_activation_summary", src("token_activation_summary"), vk),
            ("explanations", src("explanations"), {**lk, "gelu_variant": VARIANT, "explainer": PUBLISHED}),
            ("simulations", src("simulations"), sk), ("scores", src("scores"), sk),
            ("neuron_connections", src("neuron_connections"), lk), ("token_connections", src("token_connections"), lk),
        ], f"import {url} layer {layer} as {model}")
        for table in ("activation_records", "explanations", "neuron_connections"):
            counts[table] = counts.get(table, 0) + pq.read_metadata(folder / f"{table}.parquet").num_rows
        (folder / "committed").write_text("")
        bar.update()
    bar.close()
    for layer in layers:  # keep only the markers: a rerun then imports nothing twice
        for f in (stage / f"layer-{layer}").glob("*.parquet"):
            f.unlink()
    expected = {KINDS[k]: len(layers) * n_neurons for k in KINDS}
    return {"model": model, "corpus": corpus, "root": root, "layers": layers, "layers_already_imported": done,
            "rows": counts, "missing_files": {KINDS[k]: v for k, v in missing.items()}, "expected_files": expected}
