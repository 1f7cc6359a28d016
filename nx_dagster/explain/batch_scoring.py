"""Vectorized scoring of many explanations at once, from the stored `simulations` rows.

Same definitions as `scoring.py` (read its docstring), computed with numpy over the flat token arrays of
the Arrow list columns, in slices of rows so memory stays flat (fixed-length rows reduce as 2-D blocks).
Sweep 1 sums per row (n, Σt, Σs, Σt², Σs², Σts, Σ|t|, constancy) and folds rows into (explanation,
category) cells with bincount — categories are valid-top, valid-random, calibration; correlations, the
calibration fit and Σ(t − p)² follow from those sums. Sweep 2 sums |t − p| with each explanation's
calibration. Failed rows are left out of the sums; a group with too few successes (`too_few_succeeded`
per category) gets NULL metrics. One scores row per (explanation_id, gelu_variant, simulator,
simulator_model).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nx_dagster.explain.scoring import CONSTANT_TRUTH, METRICS, MIN_SUCCEEDED
from nx_dagster.explain.records import Explanation
from nx_dagster.storage.schema import TABLES, rows_to_table
from nx_dagster.vocab import CALIBRATION_SPLIT, RANDOM, SCORED_SPLIT, SIMULATED_KINDS

_TOP, _RANDOM, _CAL = 0, 1, 2
_KEYS = ("explanation_id", "gelu_variant", "simulator", "simulator_model")


def _row_sums(t: np.ndarray, s: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """Per row (rows of `lengths` > 0 tokens laid end to end): n, Σt, Σs, Σt², Σs², Σts, Σ|t|; whether t
    (s) varies within the row, and its first value (extremes of first values decide constancy later)."""
    n = len(lengths)
    if (lengths == lengths[0]).all():  # fixed-length sequences: 2-D reductions
        T, S = t.reshape(n, -1), s.reshape(n, -1)
        ones = np.ones(T.shape[1])
        sums = {"t": T @ ones, "s": S @ ones, "tt": np.einsum("ij,ij->i", T, T), "ss": np.einsum("ij,ij->i", S, S),
                "ts": np.einsum("ij,ij->i", T, S), "abs_t": np.abs(T) @ ones,
                "tvar": (T != T[:, :1]).any(axis=1), "svar": (S != S[:, :1]).any(axis=1)}
        first_t, first_s = T[:, 0], S[:, 0]
    else:
        idx = np.concatenate(([0], np.cumsum(lengths[:-1])))
        first_t, first_s = t[idx], s[idx]
        sums = {"t": np.add.reduceat(t, idx), "s": np.add.reduceat(s, idx), "tt": np.add.reduceat(t * t, idx),
                "ss": np.add.reduceat(s * s, idx), "ts": np.add.reduceat(t * s, idx),
                "abs_t": np.add.reduceat(np.abs(t), idx),
                "tvar": np.logical_or.reduceat(t != np.repeat(first_t, lengths), idx),
                "svar": np.logical_or.reduceat(s != np.repeat(first_s, lengths), idx)}
    return {"n": lengths.astype(np.float64), **sums, "tmin": first_t, "tmax": first_t, "smin": first_s,
            "smax": first_s}


def _abs_dev(t: np.ndarray, s: np.ndarray, lengths: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row Σ|t − (a·s + b)| with one (a, b) per row."""
    n = len(lengths)
    if (lengths == lengths[0]).all():
        q = s.reshape(n, -1) * -a[:, None]
        q += t.reshape(n, -1)
        q -= b[:, None]
        return np.abs(q, out=q) @ np.ones(q.shape[1])
    q = t - s * np.repeat(a, lengths) - np.repeat(b, lengths)
    return np.add.reduceat(np.abs(q, out=q), np.concatenate(([0], np.cumsum(lengths[:-1]))))


def _batches(table: pa.Table, ok: np.ndarray, rows: int):
    """(first row, t flat, s flat, lengths, row mask) per slice; rows failing `ok` or empty are masked out."""
    start = 0
    for batch in table.select(["true_activations", "expected_activations"]).to_batches(max_chunksize=rows):
        n = batch.num_rows
        keep = ok[start:start + n] & (pc.list_value_length(batch.column(0)).fill_null(0).to_numpy() > 0)
        if not keep.all():
            batch = batch.filter(pa.array(keep))
        if batch.num_rows:
            lengths = pc.list_value_length(batch.column(0)).to_numpy(zero_copy_only=False).astype(np.int64)
            t = batch.column(0).flatten().to_numpy(zero_copy_only=False).astype(np.float64)
            s = batch.column(1).flatten().to_numpy(zero_copy_only=False).astype(np.float64)
            yield start, t, s, lengths, keep
        start += n


def _constant(c: dict[str, np.ndarray], x: str) -> np.ndarray:
    """No row varies and every row starts at the same value."""
    return (c[f"{x}var"] == 0) & (c[f"{x}max"] <= c[f"{x}min"])


def _pearson(c: dict[str, np.ndarray]) -> np.ndarray:
    n = np.maximum(c["n"], 1)
    cov = c["ts"] - c["t"] * c["s"] / n
    vt, vs = c["tt"] - c["t"] ** 2 / n, c["ss"] - c["s"] ** 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(vt * vs)
    undefined = (c["n"] == 0) | _constant(c, "t") | _constant(c, "s")
    return np.where(undefined, np.nan, np.clip(r, -1.0, 1.0))


def _why(c: dict[str, np.ndarray], g: int) -> str:
    if c["n"][g] == 0:
        return "no tokens"
    if c["tvar"][g] == 0 and c["tmax"][g] <= c["tmin"][g]:
        return "true activations are constant"
    if c["svar"][g] == 0 and c["smax"][g] <= c["smin"][g]:
        return "simulated activations are constant"
    return "non-finite values"


def _group_ids(tbl: pa.Table) -> tuple[np.ndarray, int]:
    """Row -> explanation group (one per distinct key), numbered in order of first appearance."""
    code = np.zeros(tbl.num_rows, dtype=np.int64)
    for k in _KEYS:
        enc = tbl.column(k).combine_chunks().dictionary_encode()
        code = code * (len(enc.dictionary) + 1) + enc.indices.fill_null(-1).to_numpy() + 1
    enc = pa.array(code).dictionary_encode()
    return enc.indices.to_numpy().astype(np.int64), len(enc.dictionary)


def _fold_cells(tbl: pa.Table, cell: np.ndarray, ok: np.ndarray, size: int, rows: int) -> dict[str, np.ndarray]:
    """Sweep 1: per-row sums (kept per row, a few numbers each), then folded into cells (group × category)."""
    per_row: dict[str, np.ndarray] = {}
    for start, t, s, lengths, keep in _batches(tbl, ok, rows):
        at = start + np.flatnonzero(keep)
        for k, v in _row_sums(t, s, lengths).items():
            if k not in per_row:
                per_row[k] = np.zeros(len(cell))
            per_row[k][at] = v
    rows_in = ok.copy()
    rows_in[ok] = per_row.get("n", np.zeros(len(cell)))[ok] > 0
    cells = cell[rows_in]
    acc = {}
    for k in ("n", "t", "s", "tt", "ss", "ts", "abs_t", "tvar", "svar"):
        acc[k] = np.bincount(cells, weights=per_row[k][rows_in], minlength=size) if per_row else np.zeros(size)
    for k, fold, init in (("tmin", np.minimum, np.inf), ("smin", np.minimum, np.inf),
                          ("tmax", np.maximum, -np.inf), ("smax", np.maximum, -np.inf)):
        acc[k] = np.full(size, init)
        if per_row:
            fold.at(acc[k], cells, per_row[k][rows_in])
    return acc


def _combine(acc: dict[str, np.ndarray], cols: list[int]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in acc.items():
        v = v.reshape(-1, 3)[:, cols]
        out[k] = v.min(axis=1) if k.endswith("min") else v.max(axis=1) if k.endswith("max") else v.sum(axis=1)
    return out


def score_simulations(simulations: pa.Table, explanation_variants: Mapping[str, str] | None = None,
                      calibrate: bool = True, batch_rows: int = 2048) -> pa.Table:
    """Scores rows (schema of `scores`) from `simulations` rows. `explanation_variants` maps
    explanation_id -> the variant it was written from (`tables.explanation_variants`); a column
    `explanation_gelu_variant` in `simulations` is used when present."""
    tbl = simulations
    scored = pc.and_(pc.is_in(tbl.column("split"), pa.array([SCORED_SPLIT, CALIBRATION_SPLIT])),
                     pc.is_in(tbl.column("kind"), pa.array(list(SIMULATED_KINDS))))
    if pc.sum(pc.invert(scored)).as_py():
        tbl = tbl.filter(scored)
    group, n_groups = _group_ids(tbl)
    is_cal = pc.equal(tbl.column("split"), CALIBRATION_SPLIT).to_numpy(zero_copy_only=False)
    is_rand = pc.equal(tbl.column("kind"), RANDOM).to_numpy(zero_copy_only=False)
    cell = group * 3 + np.where(is_cal, _CAL, np.where(is_rand, _RANDOM, _TOP))
    ok = (tbl.column("expected_activations").is_valid().to_numpy(zero_copy_only=False)
          & tbl.column("failure_reason").is_null().to_numpy(zero_copy_only=False)
          & (pc.list_value_length(tbl.column("expected_activations")).fill_null(-1).to_numpy()
             == pc.list_value_length(tbl.column("true_activations")).fill_null(0).to_numpy()))
    acc = _fold_cells(tbl, cell, ok, n_groups * 3, batch_rows)
    valid, top, rand, cal = (_combine(acc, c) for c in ([_TOP, _RANDOM], [_TOP], [_RANDOM], [_CAL]))
    metrics = {"ev_correlation": _pearson(valid), "ev_correlation_top": _pearson(top),
               "ev_correlation_random": _pearson(rand)}

    # p = a·s + b: least squares of t on s over the calibration split (a = 0 for a constant s there)
    calibrated = np.full(n_groups, calibrate) & (cal["n"] > 0)
    nc = np.maximum(cal["n"], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(~_constant(cal, "s"),
                         (cal["ts"] - cal["t"] * cal["s"] / nc) / (cal["ss"] - cal["s"] ** 2 / nc), 0.0)
    a = np.where(calibrated, slope, 1.0)
    b = np.where(calibrated, (cal["t"] - slope * cal["s"]) / nc, 0.0)

    # Σ(t − p)² expands into the sums; Σ|t − p| takes sweep 2 (all ok rows, valid ones kept)
    v = valid
    sq = v["tt"] - 2 * a * v["ts"] - 2 * b * v["t"] + a * a * v["ss"] + 2 * a * b * v["s"] + v["n"] * b * b
    row_ab = np.zeros(len(group))
    valid_rows = ok & ~is_cal
    for start, t, s, lengths, keep in _batches(tbl, ok, batch_rows):
        at = start + np.flatnonzero(keep)
        row_ab[at] = _abs_dev(t, s, lengths, a[group[at]], b[group[at]])
    ab = np.bincount(group[valid_rows], weights=row_ab[valid_rows], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        truth_constant = (v["n"] == 0) | _constant(v, "t")  # any constant: nothing to explain
        metrics["rsquared"] = np.where(truth_constant, np.nan, 1 - np.maximum(sq, 0.0) / v["tt"])
        metrics["absolute_dev_explained"] = np.where(truth_constant, np.nan, 1 - ab / v["abs_t"])
    rows = np.bincount(cell, minlength=n_groups * 3).reshape(-1, 3)
    fails = np.bincount(cell, weights=~ok, minlength=n_groups * 3).reshape(-1, 3)
    short = ((rows > 0) & (rows - fails < MIN_SUCCEEDED * rows)).any(axis=1)
    return _assemble(tbl, group, n_groups, ok, short, metrics, (valid, top, rand), explanation_variants)


def _assemble(tbl: pa.Table, group: np.ndarray, n_groups: int, ok: np.ndarray, short: np.ndarray,
              metrics: dict[str, np.ndarray], subsets: tuple, variants: Mapping[str, str] | None) -> pa.Table:
    _, first = np.unique(group, return_index=True)
    head = tbl.select([c for c in ("explanation_id", "model", "layer", "neuron", "gelu_variant", "simulator",
                                   "simulator_model", "explanation_gelu_variant") if c in tbl.column_names]).take(first)
    n_rows = np.bincount(group, minlength=n_groups)
    n_failed = np.bincount(group, weights=~ok, minlength=n_groups).astype(np.int64)
    n_tokens = np.bincount(group, weights=pc.list_value_length(tbl.column("true_activations")).fill_null(0)
                           .to_numpy() * ok * ~pc.equal(tbl.column("split"), CALIBRATION_SPLIT).to_numpy(zero_copy_only=False),
                           minlength=n_groups).astype(np.int64)
    reasons: list[str | None] = [None] * n_groups
    failed_first = {}
    if n_failed.any():
        bad = np.flatnonzero(~ok)
        fr = tbl.column("failure_reason").take(pa.array(bad)).to_pylist()
        for row, why in zip(bad[::-1], fr[::-1]):
            failed_first[int(group[row])] = why or "simulation length differs from the sequence"
    names = list(metrics)
    nan = {k: np.isnan(v) for k, v in metrics.items()}
    for g in np.flatnonzero(np.logical_or.reduce([nan[k] for k in names]) | short):
        if short[g]:
            reasons[g] = f"simulation failed for {n_failed[g]} of {n_rows[g]} sequences: {failed_first[g]}"
            continue
        why = [f"{k}: undefined ({_why(c, g)})" for k, c in zip(names[:3], subsets) if nan[k][g]]
        if nan["rsquared"][g] or nan["absolute_dev_explained"][g]:
            why.append(CONSTANT_TRUTH if subsets[0]["n"][g] else
                       "rsquared, absolute_dev_explained: undefined (no tokens)")
        reasons[g] = "; ".join(why)
    failed = short
    cols = {c: head.column(c) for c in head.column_names}
    # the simulations' own explanation_gelu_variant where stored, else the mapping
    ids = head.column("explanation_id").to_pylist()
    stored = cols["explanation_gelu_variant"].to_pylist() if "explanation_gelu_variant" in cols else [None] * len(ids)
    cols["explanation_gelu_variant"] = pa.array([v if v is not None else (variants or {}).get(i)
                                                 for i, v in zip(ids, stored)], pa.string())
    for k in METRICS:
        cols[k] = pa.array(metrics[k], mask=nan[k] | failed)
    cols["calibrated_rsquared"] = pa.nulls(n_groups, pa.float64())  # deprecated: see scoring.py
    cols["n_tokens"] = pa.array(n_tokens)
    cols["n_sequences"], cols["n_failed_sequences"] = pa.array(n_rows.astype(np.int64)), pa.array(n_failed)
    cols["failure_reason"] = pa.array(reasons, pa.string())
    schema = TABLES["scores"]
    return pa.table({f.name: (cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n_groups, f.type))
                     for f in schema}, schema=schema)


def unscored_rows(explanations: Sequence[Explanation], scores: pa.Table, scored_variant: str, simulator: str,
                  simulator_model: str | None) -> pa.Table:
    """A scores row with NULL metrics and a reason for each explanation that has no row in `scores`
    (no valid or calibration records of the scored variant for its neuron), so none vanishes."""
    have = set(scores.column("explanation_id").to_pylist())
    rows = [dict(explanation_id=e.explanation_id, model=e.model, layer=e.layer, neuron=e.neuron,
                 explanation_gelu_variant=e.gelu_variant, gelu_variant=scored_variant, simulator=simulator,
                 simulator_model=simulator_model, n_tokens=0, n_sequences=0, n_failed_sequences=0,
                 failure_reason=f"no valid or calibration records of this neuron in the {scored_variant} "
                                "activations: nothing to simulate")
            for e in explanations if e.explanation_id not in have]
    return rows_to_table("scores", rows)
