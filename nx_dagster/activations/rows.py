"""Turn recorded layers into rows of the public tables `activation_records` and `neuron_stats`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from nx_dagster.activations.recorder import LayerRecord
from nx_dagster.storage import schema
from nx_dagster.vocab import N_QUANTILE_BINS, QUANTILE, QUANTILE_BOUNDARIES, RANDOM, RANDOM_SPLITS, TOP, TOP_SPLITS


def _float_lists(acts: np.ndarray) -> pa.Array:
    n, t = acts.shape
    offsets = pa.array(np.arange(0, (n + 1) * t, t, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(acts.reshape(-1).astype(np.float32)))


def record_rows(rec: LayerRecord, model: str, corpus: str, gelu_variant: str) -> pa.Table:
    parts: list[dict[str, np.ndarray]] = []
    for kind, (seq, acts) in ((TOP, rec.top), (RANDOM, rec.random)):
        seq, acts = seq.numpy(), acts.numpy()
        n, k = seq.shape
        ranks = np.broadcast_to(np.arange(k), (n, k))
        splits = np.array(TOP_SPLITS if kind == TOP else RANDOM_SPLITS, dtype=object)
        parts.append({"kind": np.full((n, k), kind, dtype=object), "quantile": np.full((n, k), -1),
                      "rank": ranks, "split": splits[ranks % len(splits)], "seq": seq, "acts": acts,
                      "neuron": np.broadcast_to(rec.neurons.numpy()[:, None], (n, k))})
    bins, seq, acts = (t.numpy() for t in rec.quantile)
    n, m = seq.shape
    per_bin = m // N_QUANTILE_BINS
    parts.append({"kind": np.full((n, m), QUANTILE, dtype=object), "quantile": bins,
                  "rank": np.broadcast_to(np.arange(m) % per_bin, (n, m)), "split": np.full((n, m), None, dtype=object),
                  "seq": seq, "acts": acts, "neuron": np.broadcast_to(rec.neurons.numpy()[:, None], (n, m))})
    cols = {k: np.concatenate([p[k].reshape(-1) for p in parts]) for k in ("kind", "quantile", "rank", "split", "seq", "neuron")}
    acts = np.concatenate([p["acts"].reshape(-1, p["acts"].shape[-1]) for p in parts])
    keep = cols["seq"] >= 0  # a corpus smaller than k leaves empty slots
    order = np.lexsort((cols["rank"][keep], cols["quantile"][keep], _kind_order(cols["kind"][keep]), cols["neuron"][keep]))
    sel = {k: v[keep][order] for k, v in cols.items()}
    acts = acts[keep][order]
    n_rows = len(sel["seq"])
    q = sel["quantile"].astype(np.int32)
    return schema.table("activation_records", {
        **_layer_columns(model, corpus, gelu_variant, rec.layer, n_rows),
        "neuron": sel["neuron"].astype(np.int32),
        "kind": sel["kind"],
        "quantile": pa.array(q, mask=q < 0),
        "rank": sel["rank"].astype(np.int32),
        "split": sel["split"],
        "sequence_id": sel["seq"].astype(np.int64),
        "max_activation": acts.max(axis=1).astype(np.float32),
        "activations": _float_lists(acts),
    })


def _kind_order(kinds: np.ndarray) -> np.ndarray:
    return np.select([kinds == TOP, kinds == RANDOM], [0, 1], 2)


def _layer_columns(model: str, corpus: str, gelu_variant: str, layer: int, n: int) -> dict:
    """The columns that all `n` rows of one recorded layer share."""
    return {
        "model": pa.repeat(pa.scalar(model), n),
        "corpus": pa.repeat(pa.scalar(corpus), n),
        "gelu_variant": pa.repeat(pa.scalar(gelu_variant), n),
        "layer": np.full(n, layer, dtype=np.int32),
    }


def stats_rows(rec: LayerRecord, model: str, corpus: str, gelu_variant: str) -> pa.Table:
    s = {k: v.numpy() for k, v in rec.stats.items()}
    n = len(rec.neurons)
    b = s["boundaries"].astype(np.float64)
    nb = len(QUANTILE_BOUNDARIES)
    return schema.table("neuron_stats", {
        **_layer_columns(model, corpus, gelu_variant, rec.layer, n),
        "neuron": rec.neurons.numpy().astype(np.int32),
        "n_tokens": np.full(n, rec.n_tokens, dtype=np.int64),
        "mean": pa.array(s["mean"], from_pandas=True),
        "variance": pa.array(s["variance"], from_pandas=True),
        "skewness": pa.array(s["skewness"], from_pandas=True),  # NaN (constant neuron) -> NULL
        "kurtosis": pa.array(s["kurtosis"], from_pandas=True),
        "max_activation": pa.array(s["max"]),
        "quantile_boundaries": pa.ListArray.from_arrays(pa.array(np.arange(0, nb * n + 1, nb, dtype=np.int32)),
                                                        pa.array(b.reshape(-1))),
    })
