"""Corpora from text, JSONL and Parquet files, local or through fsspec URLs; stable sequence ids."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nx_dagster.corpus import CorpusSpec, iter_sequence_batches
from nx_dagster.corpus.documents import corpus_name, iter_documents
from nx_dagster.errors import NxInputError
from nx_dagster.model import open_checkpoint
from tests.checkpoints import build_checkpoint, word_tokenizer

TEXT = "Paris is the capital of France. The cat sat on the mat. " * 40


def sequences(source, seq_len=16):
    tok = word_tokenizer(300)
    tables = list(iter_sequence_batches(CorpusSpec(source, seq_len), tok, "m", batch_rows=7))
    return pa.concat_tables(tables).to_pylist()


def test_text_jsonl_parquet_give_the_same_sequences(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "doc1", "text": TEXT}) + "\n")
    pq.write_table(pa.table({"text": [TEXT]}), tmp_path / "a.parquet")
    runs = [sequences(str(tmp_path / name)) for name in ("a.txt", "a.jsonl", "a.parquet")]
    ids = [[r["token_ids"] for r in run] for run in runs]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) > 5
    assert [r["sequence_id"] for r in runs[0]] == list(range(len(runs[0])))
    assert all(len(r["token_ids"]) == 16 == len(r["tokens"]) for r in runs[0])
    assert runs[1][0]["document"] == "a.jsonl:doc1"


def test_fsspec_url_and_glob(tmp_path):
    for i in range(3):
        (tmp_path / f"part{i}.jsonl").write_text(json.dumps({"text": f"document {i}. " + TEXT}) + "\n")
    local = sequences(str(tmp_path / "*.jsonl"))
    url = sequences(f"file://{tmp_path}/*.jsonl")
    assert [r["token_ids"] for r in local] == [r["token_ids"] for r in url]
    assert [r["document"].split(":")[0] for r in local][:1] == ["part0.jsonl"]
    assert corpus_name(f"file://{tmp_path}/part0.jsonl") == "part0"


def test_stable_ids_across_runs_and_max_sequences(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    a, b = sequences(str(tmp_path / "a.txt")), sequences(str(tmp_path / "a.txt"))
    assert a == b
    tok = word_tokenizer(300)
    capped = list(iter_sequence_batches(CorpusSpec(str(tmp_path / "a.txt"), 16, max_sequences=3), tok, "m"))
    assert sum(t.num_rows for t in capped) == 3


def test_bundled_corpus_is_shipped():
    docs = list(iter_documents("bundled"))
    assert len(docs) > 100 and sum(len(t) for _, t in docs) > 1_000_000


def test_checkpoint_from_fsspec_url(tmp_path, monkeypatch):
    monkeypatch.setenv("NX_CACHE", str(tmp_path / "cache"))
    folder = build_checkpoint(tmp_path / "remote" / "ckpt", n_layer=2, n_embd=32)
    local = open_checkpoint(str(folder))
    remote = open_checkpoint(f"file://{folder}")
    assert remote.sha256 == local.sha256 and remote.name == "ckpt"
    assert str(remote.folder).startswith(str(tmp_path / "cache"))


def test_bad_jsonl_line_is_named(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": TEXT}) + "\nnot json\n")
    with pytest.raises(NxInputError, match="line 2"):
        sequences(str(tmp_path / "bad.jsonl"))
