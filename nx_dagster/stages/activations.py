"""Stage `activations`: models, sequences, activation records, neuron stats and the GELU fix impact."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401
import torch

from nx_dagster.activations import RecorderSettings, record_rows, stats_rows
from nx_dagster.activations.passes import record_pass
from nx_dagster.activations.token_summary import TokenSummary, eligible_tokens
from nx_dagster.corpus import iter_sequence_batches
from nx_dagster.errors import NxInputError
from nx_dagster.model.gelu import get_variant
from nx_dagster.storage import Catalog, schema
from nx_dagster.subject import Subject

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def write_model(catalog: Catalog, s: Subject) -> dict:
    c = s.ckpt.config
    row = schema.rows_to_table("models", [{
        "model": s.name, "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head, "n_neurons": c.n_neurons,
        "n_positions": c.n_positions, "vocab_size": c.vocab_size, "checkpoint_sha256": s.ckpt.sha256,
        "data_version": s.ckpt.data_version, "source": s.ckpt.source, "created_at": dt.datetime.now(dt.timezone.utc),
    }])
    snap = catalog.replace_if_changed("models", row, {"model": s.name}, f"models {s.name}", ignore=("created_at",))
    return {"model": s.name, "n_layer": c.n_layer, "n_neurons_per_layer": c.n_neurons, "d_model": c.n_embd,
            "vocab_size": c.vocab_size, "checkpoint_sha256": s.ckpt.sha256, "snapshot": snap}


def write_sequences(catalog: Catalog, s: Subject) -> dict:
    if s.corpus.seq_len > s.ckpt.config.n_positions:
        raise NxInputError(f"sequence length {s.corpus.seq_len}", f"exceeds the model's context of "
                           f"{s.ckpt.config.n_positions} tokens", "lower the sequence length")
    tok = s.ckpt.load_tokenizer()
    counted = {"rows": 0}

    def batches() -> Iterator[pa.Table]:
        for t in iter_sequence_batches(s.corpus, tok, s.name, s.ckpt.token_strings()):
            counted["rows"] += t.num_rows
            yield t

    snap = catalog.replace_if_changed("sequences", batches(), {"model": s.name, "corpus": s.corpus.name},
                                      f"sequences {s.name}/{s.corpus.name}")
    return {"corpus": s.corpus.name, "sequences": counted["rows"], "tokens": counted["rows"] * s.corpus.seq_len,
            "seq_len": s.corpus.seq_len, "snapshot": snap}


def sequence_batches(catalog: Catalog, model: str, corpus: str, batch_size: int, chunk: int = 16384
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stream (sequence ids, token ids) from the `sequences` table in id order, reading `chunk` sequences
    per query (each query a short read: a read held open for a whole recording pass would hold a SQLite
    catalog's read lock, and other processes' commits would wait for it), all at the snapshot current
    when the stream starts. Batches hold `batch_size` sequences (the last one fewer)."""
    from nx_dagster.storage.attach import ALIAS

    chunk = max(1, chunk // batch_size) * batch_size  # whole batches per query
    snap = catalog.query(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()").column(0)[0].as_py()
    after = -1
    while True:
        with catalog.session(read_only=True, snapshot=snap) as con:
            part = catalog.retry(lambda: con.execute(
                "SELECT sequence_id, token_ids FROM sequences WHERE model = ? AND corpus = ? AND sequence_id > ? "
                "ORDER BY sequence_id LIMIT ?", [model, corpus, after, chunk]).fetch_arrow_table())
        if part.num_rows == 0:
            return
        after = part.column(0)[-1].as_py()
        part = part.combine_chunks()
        for start in range(0, part.num_rows, batch_size):
            b = part.slice(start, batch_size)
            flat = b.column(1).combine_chunks().flatten().to_numpy(zero_copy_only=False)  # flatten: slice-aware
            yield (torch.from_numpy(b.column(0).to_numpy().astype(np.int64)),
                   torch.from_numpy(flat.astype(np.int64)).view(b.num_rows, -1))
        if part.num_rows < chunk:
            return


def count_sequences(catalog: Catalog, model: str, corpus: str) -> int:
    n = catalog.query("SELECT count(*) FROM sequences WHERE model = ? AND corpus = ?", [model, corpus]).column(0)[0].as_py()
    if not n:
        raise NxInputError(f"corpus {corpus!r}", f"has no sequences stored for model {model!r}",
                           "materialize the `sequences` asset first (nxd run --stages activations)")
    return n


def progress(label: str, total: int, report: Progress | None, every_s: float = 5.0,
             unit: str = "tokens") -> Callable[[int, int], None]:
    """`on_batch(batches_done, done)` that reports `label: done/total unit (%), rate, time left` at
    most every `every_s` seconds, and once at the end (with the time taken)."""
    start = time.perf_counter()
    last = [-float("inf")]

    def on_batch(done_batches: int, done: int) -> None:
        now = time.perf_counter()
        if report and (now - last[0] >= every_s or done >= total):
            last[0] = now
            rate = done / max(now - start, 1e-9)
            left = (f", {now - start:,.1f} s" if done >= total else
                    f", {(total - done) / rate:,.0f} s left" if done else "")
            report(f"{label}: {done:,}/{total:,} {unit} ({100 * done / max(total, 1):.0f}%), "
                   f"{rate:,.0f} {unit}/s{left}")
    return on_batch


def corpus_token_counts(catalog: Catalog, model: str, corpus: str, vocab_size: int) -> torch.Tensor:
    counts = catalog.query(
        "SELECT tok, count(*) AS n FROM (SELECT unnest(token_ids) AS tok FROM sequences "
        "WHERE model = ? AND corpus = ?) GROUP BY tok", [model, corpus])
    out = torch.zeros(vocab_size, dtype=torch.long)
    out[torch.from_numpy(counts["tok"].to_numpy().astype(np.int64))] = torch.from_numpy(counts["n"].to_numpy().copy())
    return out


def write_activations(
    catalog: Catalog, s: Subject, variants: list[str], layers: list[int], settings: RecorderSettings,
    neurons: range | None = None, report: Progress | None = None, summary_k: int = 20, fix_impact: bool = False,
) -> dict:
    """Record `layers` (and `neurons`, a contiguous range) of each GELU variant in `variants`, and with
    `fix_impact` compare pre_fix and post_fix on every layer, all in one pass over the corpus
    (`record_pass`). Then, in one commit, replace these partitions of activation_records, neuron_stats
    and token_activation_summary, and the model's `gelu_fix_impact` rows.

    Returns {"variants": {variant: {"records", "stats", "summary"}}, "fix_impact": rows or None,
    "seconds", "tokens" (per variant), "snapshot"}. Bad layers raise NxInputError before any write."""
    for v in variants:
        get_variant(v)
    cfg = s.ckpt.config
    bad = [layer for layer in layers if not 0 <= layer < cfg.n_layer]
    if bad:
        raise NxInputError(f"layers {bad}", f"do not exist in {s.name} (layers 0-{cfg.n_layer - 1})", "pick existing layers")
    n_seq = count_sequences(catalog, s.name, s.corpus.name)
    shard = neurons or range(cfg.n_neurons)
    summaries = {}
    if variants and layers:
        eligible = eligible_tokens(corpus_token_counts(catalog, s.name, s.corpus.name, cfg.vocab_size))
        summaries = {(v, layer): TokenSummary(len(shard), cfg.vocab_size, eligible, device=s.device)
                     for v in variants for layer in layers}

    def gather_summary(variant: str, layer: int, token_ids: torch.Tensor, post: torch.Tensor) -> None:
        summaries[variant, layer].update(token_ids, post[:, :, shard.start:shard.stop])

    label = " + ".join([*(f"{v} layers {layers}" for v in variants), *(["gelu_fix_impact"] if fix_impact else [])])
    t0 = time.perf_counter()
    result = record_pass(
        s.model, sequence_batches(catalog, s.name, s.corpus.name, settings.batch_size),
        {v: layers for v in variants}, s.corpus.seq_len, settings, neurons, fix_impact,
        on_batch=progress(label, n_seq * s.corpus.seq_len, report), extra=gather_summary,
    )
    seconds = time.perf_counter() - t0
    strings = s.ckpt.token_strings() if variants else None
    out, writes = {}, []
    for v in variants:
        recs = result.records[v].values()
        out[v] = {
            "records": pa.concat_tables([record_rows(r, s.name, s.corpus.name, v) for r in recs]),
            "stats": pa.concat_tables([stats_rows(r, s.name, s.corpus.name, v) for r in recs]),
            "summary": pa.concat_tables([_offset_neurons(summaries[v, layer].rows(
                s.name, s.corpus.name, v, layer, None, summary_k, strings), shard.start) for layer in layers]),
        }
    if variants:
        keys = {"model": s.name, "corpus": s.corpus.name, "gelu_variant": list(variants), "layer": layers}
        if neurons is not None:
            keys["neuron"] = list(neurons)
        for table, part in (("activation_records", "records"), ("neuron_stats", "stats"),
                            ("token_activation_summary", "summary")):
            writes.append((table, pa.concat_tables([out[v][part] for v in variants]), keys))
    fix_rows = result.fix_impact.rows(s.name, s.corpus.name) if fix_impact else None
    if fix_rows is not None:
        writes.append(("gelu_fix_impact", fix_rows, {"model": s.name, "corpus": s.corpus.name}))
    snap = catalog.replace_many(writes, f"activations {s.name} {label}")
    return {"variants": out, "fix_impact": fix_rows, "seconds": seconds, "tokens": n_seq * s.corpus.seq_len,
            "snapshot": snap}


def _offset_neurons(table: pa.Table, offset: int) -> pa.Table:
    if not offset:
        return table
    i = table.schema.get_field_index("neuron")
    return table.set_column(i, "neuron", pa.compute.add(table["neuron"], pa.scalar(offset, table["neuron"].type)))
