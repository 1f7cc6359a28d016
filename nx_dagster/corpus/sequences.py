"""Cut documents into fixed-length token sequences with stable ids.

Each document is tokenized on its own and cut into consecutive windows of `seq_len` tokens; a tail
shorter than `seq_len` is dropped. Sequence ids count up from 0 in document order, so the same corpus
and tokenizer always give the same ids. Each sequence is its own context (positions start at 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import pyarrow as pa

from nx_dagster.corpus.documents import iter_documents
from nx_dagster.corpus.identity import corpus_identity
from nx_dagster.errors import NxInputError
from nx_dagster.model.token_strings import TokenStrings
from nx_dagster.storage import schema

SEQ_LEN = 64


@dataclass(frozen=True)
class CorpusSpec:
    source: str | None = None  # NX_CORPUS: 'bundled', a path/glob or an fsspec URL
    seq_len: int = SEQ_LEN
    max_sequences: int | None = None

    @cached_property
    def name(self) -> str:
        """The corpus key of every derived row: readable name + hash of content and cutting settings
        (`nx_dagster.corpus.identity`). Computed once per spec; reads the corpus files."""
        return corpus_identity(self.source, self.seq_len, self.max_sequences)


def iter_sequence_batches(spec: CorpusSpec, tokenizer, model: str, strings: TokenStrings | None = None,
                          batch_rows: int = 4096) -> Iterator[pa.Table]:
    """Yields `sequences` rows in batches; raises if the corpus gives no full sequence. `tokens` are
    the one decoder's strings (`model.token_strings`, built from `tokenizer` when `strings` is None)."""
    if spec.seq_len < 2:
        raise NxInputError(f"sequence length {spec.seq_len}", "is too short", "use at least 2 tokens (64 is standard)")
    vocab = (strings or TokenStrings(tokenizer)).strings
    rows: dict[str, list] = {k: [] for k in ("sequence_id", "document", "start_token", "token_ids", "tokens")}
    next_id = 0
    for doc_id, text in iter_documents(spec.source):
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        for start in range(0, len(ids) - spec.seq_len + 1, spec.seq_len):
            if spec.max_sequences is not None and next_id >= spec.max_sequences:
                break
            window = ids[start:start + spec.seq_len]
            rows["sequence_id"].append(next_id)
            rows["document"].append(doc_id)
            rows["start_token"].append(start)
            rows["token_ids"].append(window)
            rows["tokens"].append([vocab[i] for i in window])
            next_id += 1
            if len(rows["sequence_id"]) >= batch_rows:
                yield _table(rows, spec.name, model)
                rows = {k: [] for k in rows}
        if spec.max_sequences is not None and next_id >= spec.max_sequences:
            break
    if next_id == 0:
        raise NxInputError(
            f"corpus {spec.source or 'bundled'!r}", f"holds no sequence of {spec.seq_len} tokens",
            "supply more text (each document needs at least that many tokens) or lower the sequence length",
        )
    if rows["sequence_id"]:
        yield _table(rows, spec.name, model)


def _table(rows: dict[str, list], corpus: str, model: str) -> pa.Table:
    n = len(rows["sequence_id"])
    return schema.table("sequences", {
        "model": pa.repeat(pa.scalar(model), n), "corpus": pa.repeat(pa.scalar(corpus), n), **rows})
