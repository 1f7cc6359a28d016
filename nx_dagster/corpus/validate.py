"""Check a whole corpus before any table changes: every document parses, and one full sequence exists.

`nxd run` (and the `model` asset) call this first, so a malformed line deep in a file stops the run
before the `models` row or any other row is written. Parsing reads every file once; tokenizing stops at
the first document that yields a full sequence.
"""

from __future__ import annotations

import logging
import time

from nx_dagster.corpus.documents import iter_documents
from nx_dagster.corpus.sequences import CorpusSpec
from nx_dagster.errors import NxInputError

log = logging.getLogger(__name__)


def validate_corpus(spec: CorpusSpec, tokenizer) -> dict:
    """Parse every document of `spec` (the readers raise NxInputError naming file, line and fix) and make
    sure at least one holds `seq_len` tokens. Returns {"documents": n, "characters": n, "seconds": s}."""
    t0 = time.perf_counter()
    docs = chars = 0
    full = False
    for _, text in iter_documents(spec.source):
        docs += 1
        chars += len(text)
        if not full and len(text) >= spec.seq_len:  # a token holds at least one character
            full = len(tokenizer.encode(text, add_special_tokens=False).ids) >= spec.seq_len
    if not full:
        raise NxInputError(
            f"corpus {spec.source or 'bundled'!r}", f"holds no sequence of {spec.seq_len} tokens "
            f"({docs} documents, {chars:,} characters)",
            "supply more text (each document needs at least that many tokens) or lower the sequence length",
        )
    seconds = time.perf_counter() - t0
    log.info("corpus %s: %d documents, %d characters, checked in %.1f s", spec.source or "bundled", docs, chars, seconds)
    return {"documents": docs, "characters": chars, "seconds": seconds}
