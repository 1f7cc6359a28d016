"""Corpora: documents from the bundled corpus or user files, cut into fixed-length token sequences."""

from nx_dagster.corpus.sequences import SEQ_LEN, CorpusSpec, iter_sequence_batches

__all__ = ["SEQ_LEN", "CorpusSpec", "iter_sequence_batches"]
