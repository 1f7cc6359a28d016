"""Connections match PRODUCT.md §4's formulas computed densely; ties are deterministic; writes replace."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from nx_dagster.activations.token_summary import SUMMARY_SCHEMA
from nx_dagster.connections import (
    NEURON_SCHEMA, TOKEN_SCHEMA, RunningTopK, neuron_connection_rows, tile_topk, token_connection_rows, token_topk,
)
from nx_dagster.model.checkpoint import open_checkpoint, raw_weights
from nx_dagster.model.token_strings import token_bytes
from nx_dagster.stages.connections import write_connections
from nx_dagster.storage.schema import ddl
from tests.checkpoints import build_checkpoint

ARROW_TYPES = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "FLOAT": pa.float32(), "BIGINT": pa.int64()}


def ref_order(values: np.ndarray, ids: np.ndarray, k: int, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    """The package order, by brute force: by value (desc if largest), then id ascending; first k."""
    order = np.lexsort((ids, -values if largest else values))[:k]
    return values[order], ids[order]


def dense_neuron_matrix(w: dict, n_layer: int) -> np.ndarray:
    """C[l1, n1, l2, n2] = W_out[l1][n1,:] · diag(ln_2.g[l2]) · W_in[l2][:,n2] in float64 (NaN for l1 >= l2)."""
    w_out = np.stack([w[f"h.{l}.mlp.c_proj.weight"].double().numpy() for l in range(n_layer)])  # [L, N, d]
    w_in = np.stack([w[f"h.{l}.mlp.c_fc.weight"].double().numpy() for l in range(n_layer)])  # [L, d, N]
    g = np.stack([w[f"h.{l}.ln_2.weight"].double().numpy() for l in range(n_layer)])  # [L, d]
    full = np.einsum("anj,bj,bjm->anbm", w_out, g, w_in)
    later = np.arange(n_layer)[:, None] < np.arange(n_layer)[None, :]
    return np.where(later[:, None, :, None], full, np.nan)


def stored_lists(table: pa.Table, cols: tuple[str, ...]) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """(layer, neuron, direction, sign) -> (weights in rank order, target ids in rank order)."""
    d = table.to_pydict()
    out: dict[tuple, list] = {}
    for i in range(table.num_rows):
        key = (d["layer"][i], d["neuron"][i], d["direction"][i], d["sign"][i])
        out.setdefault(key, []).append((d["rank"][i], d["weight"][i], tuple(d[c][i] for c in cols)))
    result = {}
    for key, rows in out.items():
        rows.sort()
        assert [r[0] for r in rows] == list(range(len(rows))), f"ranks of {key} are not 0..k-1"
        result[key] = (np.array([r[1] for r in rows], dtype=np.float32), [r[2] for r in rows])
    return result


def expected_neuron_lists(dense: np.ndarray, k: int) -> dict[tuple, tuple[np.ndarray, list]]:
    n_layer, n = dense.shape[:2]
    out = {}
    for layer in range(n_layer):
        for neuron in range(n):
            for direction, vals in (("upstream", dense[:layer, :, layer, neuron]),
                                    ("downstream", dense[layer, neuron, layer + 1:, :])):
                if vals.size == 0:
                    continue
                first = 0 if direction == "upstream" else layer + 1
                ids = np.arange(vals.size) + first * n
                for sign, largest in (("positive", True), ("negative", False)):
                    v, i = ref_order(vals.reshape(-1), ids, k, largest)
                    out[(layer, neuron, direction, sign)] = (v, [(int(x) // n, int(x) % n) for x in i])
    return out


def assert_lists_equal(got: dict, want: dict) -> None:
    """Same keys, same targets in the same rank order, weights equal to float32 precision."""
    assert set(got) == set(want)
    for key, (w_vals, w_ids) in want.items():
        g_vals, g_ids = got[key]
        assert g_ids == w_ids, f"{key}: {g_ids} != {w_ids}"
        np.testing.assert_array_max_ulp(g_vals, w_vals.astype(np.float32), maxulp=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = build_checkpoint(tmp_path_factory.mktemp("conn") / "ckpt", n_layer=4, n_embd=32, vocab_size=300)
    return open_checkpoint(str(folder))


@pytest.mark.parametrize("table,schema", [
    ("neuron_connections", NEURON_SCHEMA), ("token_connections", TOKEN_SCHEMA),
    ("token_activation_summary", SUMMARY_SCHEMA),
])
def test_arrow_schemas_match_catalog(table, schema):
    cols = [c.split() for c in ddl(table).replace("\n", " ").split(",")]
    cols = [c for c in cols if c[0] != "source"]  # filled by `nxd import` only; computed rows leave it NULL
    assert [(name, ARROW_TYPES[kind]) for name, kind in cols] == [(f.name, f.type) for f in schema]


@pytest.mark.parametrize("k", [5, 200])
def test_neuron_connections_match_dense_formula(ckpt, k):
    w = raw_weights(ckpt)
    dense = dense_neuron_matrix(w, 4)
    table = neuron_connection_rows(w, ckpt.name, k=k, dtype=torch.float64)
    assert table.schema == NEURON_SCHEMA
    assert set(table["model"].to_pylist()) == {ckpt.name}
    assert_lists_equal(stored_lists(table, ("other_layer", "other_neuron")), expected_neuron_lists(dense, k))
    # the default float32 path: the same top-k values, each stored weight that of its stored target
    # (near-equal weights may swap places in float32, so targets are checked through the dense matrix)
    got = stored_lists(neuron_connection_rows(w, ckpt.name, k=k), ("other_layer", "other_neuron"))
    want = expected_neuron_lists(dense, k)
    assert set(got) == set(want)
    for (layer, neuron, direction, sign), (vals, targets) in got.items():
        at = [dense[ol, on, layer, neuron] if direction == "upstream" else dense[layer, neuron, ol, on]
              for ol, on in targets]
        np.testing.assert_allclose(vals, at, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(vals, want[(layer, neuron, direction, sign)][0], rtol=1e-4, atol=1e-5)
        assert len(set(targets)) == len(targets)


def test_layer_subset_is_the_same_rows(ckpt):
    w = raw_weights(ckpt)
    full = neuron_connection_rows(w, "m", k=6)
    part = neuron_connection_rows(w, "m", layers=[3, 1], k=6)
    mask = np.isin(full["layer"].to_numpy(), [1, 3])
    assert part.equals(full.filter(pa.array(mask)))


def test_token_connections_match_dense_formula(ckpt):
    w = {key: t.double() for key, t in raw_weights(ckpt).items()}
    tok = ckpt.load_tokenizer()
    wte, ln_f = w["wte.weight"].numpy(), w["ln_f.weight"].numpy()
    k = 7
    table = token_connection_rows(w, tok, ckpt.name, k=k, dtype=torch.float64)
    want = {}
    for layer in range(4):
        g = w[f"h.{layer}.ln_2.weight"].numpy()
        inp = wte @ np.diag(g) @ w[f"h.{layer}.mlp.c_fc.weight"].numpy()  # [V, N]
        out = w[f"h.{layer}.mlp.c_proj.weight"].numpy() @ np.diag(ln_f) @ wte.T  # [N, V]
        ids = np.arange(wte.shape[0])
        for n in range(inp.shape[1]):
            for direction, vals in (("input", inp[:, n]), ("output", out[n])):
                for sign, largest in (("positive", True), ("negative", False)):
                    v, i = ref_order(vals, ids, k, largest)
                    want[(layer, n, direction, sign)] = (v, [(int(x),) for x in i])
    assert_lists_equal(stored_lists(table, ("token_id",)), want)
    d = table.to_pydict()
    # the one decoder's strings: the tokenizer's own bytes (its decode is lossy only where they are not UTF-8)
    assert all(token_bytes(t).decode("utf-8", "replace") == tok.decode([i], skip_special_tokens=False)
               for i, t in zip(d["token_id"], d["token"]))
    # small tiles (several neuron blocks per layer) give identical lists
    small = token_topk(w, [2], k, dtype=torch.float64, tile_bytes=7 * 300 * 8)
    big = token_topk(w, [2], k, dtype=torch.float64)
    for key in big:
        assert torch.equal(small[key][1], big[key][1])
        torch.testing.assert_close(small[key][0], big[key][0], rtol=1e-12, atol=1e-12)


def tie_weights() -> dict[str, torch.Tensor]:
    """3 layers, d=2, N=4: weight(l1,n1 -> l2,n2) = s[n1] · 2 · c[n2] with s = ±1, c in {1, 2}."""
    s, c = torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.tensor([1.0, 2.0, 1.0, 2.0])
    w = {}
    for layer in range(3):
        w[f"h.{layer}.mlp.c_proj.weight"] = torch.stack([s, torch.zeros(4)], 1)  # [N, d]
        w[f"h.{layer}.mlp.c_fc.weight"] = torch.stack([c, 5 * c])  # [d, N]
        w[f"h.{layer}.ln_2.weight"] = torch.tensor([2.0, 3.0])
    return w


def test_ties_break_by_lower_layer_then_neuron():
    table = neuron_connection_rows(tie_weights(), "ties", k=3)
    lists = stored_lists(table, ("other_layer", "other_neuron"))
    assert lists[(0, 0, "downstream", "positive")][1] == [(1, 1), (1, 3), (2, 1)]
    assert lists[(0, 0, "downstream", "negative")][1] == [(1, 0), (1, 2), (2, 0)]
    assert lists[(2, 1, "upstream", "positive")][1] == [(0, 0), (0, 2), (1, 0)]
    assert lists[(2, 1, "upstream", "negative")][1] == [(0, 1), (0, 3), (1, 1)]
    dense = dense_neuron_matrix(tie_weights(), 3)
    assert_lists_equal(lists, expected_neuron_lists(dense, 3))
    assert neuron_connection_rows(tie_weights(), "ties", k=3).equals(table)  # same again


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("largest", [True, False])
def test_tile_topk_and_running_merge_with_many_ties(dim, largest):
    gen = torch.Generator().manual_seed(3)
    tile = torch.randint(-3, 4, (37, 50), generator=gen).double()  # a handful of distinct values
    rows = tile if dim == 1 else tile.t()
    vals, pos = tile_topk(tile, 6, largest, dim)
    running = RunningTopK(rows.shape[0], 6, largest, "cpu", torch.float64, buffer=12)
    for start in (40, 0, 20, 10, 30):  # out of order, offsets are global
        running.add_tile(rows[:, start:start + 10], offset=start)
    r_vals, r_ids = running.result()
    for r in range(rows.shape[0]):
        v, i = ref_order(rows[r].numpy(), np.arange(rows.shape[1]), 6, largest)
        assert pos[r].tolist() == i.tolist() and r_ids[r].tolist() == i.tolist()
        assert vals[r].tolist() == v.tolist() and r_vals[r].tolist() == v.tolist()


def test_write_through_catalog_is_idempotent_and_follows_the_checkpoint(ckpt, tmp_path, monkeypatch):
    from nx_dagster.storage.catalog import Catalog

    monkeypatch.setenv("NX_HOME", str(tmp_path / "home"))
    catalog = Catalog()
    first = write_connections(catalog, ckpt, k=4)
    again = write_connections(catalog, ckpt, k=4)
    assert again["snapshot"] > first["snapshot"]
    assert {**first, "snapshot": 0} == {**again, "snapshot": 0}
    assert set(first["layers"]) == {0, 1, 2, 3} and "strongest_downstream" in first["layers"][0]
    with catalog.session() as con:
        counts = con.execute("SELECT (SELECT count(*) FROM neuron_connections), "
                             "(SELECT count(*) FROM token_connections)").fetchone()
        assert counts == (first["neuron_connections"], first["token_connections"])
        dup = con.execute("SELECT count(*) FROM (SELECT layer, neuron, direction, sign, rank FROM neuron_connections "
                          "GROUP BY ALL HAVING count(*) > 1)").fetchone()
        assert dup == (0,)

    # new weights under the same model name: only layer 1's partition is replaced, with the new values
    other = open_checkpoint(str(build_checkpoint(tmp_path / "v2" / ckpt.folder.name, n_layer=4, n_embd=32,
                                                 vocab_size=300, seed=1)))
    assert other.name == ckpt.name and other.sha256 != ckpt.sha256
    write_connections(catalog, other, layers=[1], k=4)
    with catalog.session() as con:
        stored = con.execute("SELECT * EXCLUDE (model, source) FROM neuron_connections WHERE layer = 1 "
                             "ORDER BY direction, sign, neuron, rank").fetch_arrow_table()
        total = con.execute("SELECT count(*) FROM neuron_connections").fetchone()[0]
        tokens = con.execute("SELECT count(*) FROM token_connections WHERE layer = 1").fetchone()[0]
    want = neuron_connection_rows(raw_weights(other), other.name, layers=[1], k=4).drop_columns(["model"])
    assert stored.equals(want.cast(stored.schema))
    assert total == first["neuron_connections"] and tokens == first["layers"][1]["token_rows"]
