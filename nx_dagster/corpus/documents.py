"""Where documents come from: the bundled corpus, or the user's text / JSONL / Parquet files
(local paths, globs or fsspec URLs). Each yields (document id, text) in a deterministic order."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Iterator

from nx_dagster.errors import NxInputError

BUNDLED = "bundled"
BUNDLED_FILE = Path(__file__).resolve().parent.parent / "bundled" / "corpus" / "python_docs.jsonl.gz"
TEXT_FIELD = "text"
_SUFFIXES = (".txt", ".text", ".md", ".jsonl", ".json", ".parquet", ".jsonl.gz", ".txt.gz")


def corpus_name(source: str | None) -> str:
    source = (source or "").strip() or BUNDLED
    if source == BUNDLED:
        return BUNDLED
    name = source.rstrip("/").rsplit("/", 1)[-1]
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def corpus_files(source: str) -> list[str]:
    """The corpus's files in a fixed order (sorted paths); fsspec URLs keep their protocol."""
    import fsspec

    fs, _ = fsspec.core.url_to_fs(source)
    paths = fs.expand_path(source, recursive=True) if fs.exists(source) or any(c in source for c in "*?[") else []
    files = sorted(p for p in paths if fs.isfile(p))
    if not files:
        raise NxInputError(
            f"corpus {source!r}", "matches no file",
            "set NX_CORPUS to a text, JSONL or Parquet file, a folder or glob of them, or 'bundled'",
        )
    proto = source.split("://", 1)[0] + "://" if "://" in source else ""
    return [p if p.startswith(proto) else proto + p for p in files]


def iter_documents(source: str | None) -> Iterator[tuple[str, str]]:
    source = (source or "").strip() or BUNDLED
    if source == BUNDLED:
        yield from _jsonl(BUNDLED_FILE.open("rb"), BUNDLED, gz=True)
        return
    import fsspec

    for path in corpus_files(source):
        label = path.rsplit("/", 1)[-1]
        with fsspec.open(path, "rb") as fh:
            if path.endswith(".parquet"):
                yield from _parquet(fh, label)
            elif path.endswith((".jsonl", ".json", ".jsonl.gz")):
                yield from _jsonl(fh, label, gz=path.endswith(".gz"))
            else:
                yield from _text(fh, label, gz=path.endswith(".gz"))


def _jsonl(fh, label: str, gz: bool) -> Iterator[tuple[str, str]]:
    stream = io.TextIOWrapper(gzip.GzipFile(fileobj=fh) if gz else fh, encoding="utf-8")
    with stream:
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = obj[TEXT_FIELD] if isinstance(obj, dict) else obj
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise NxInputError(
                    f"corpus file {label} line {lineno}", f"is not a JSON object with a {TEXT_FIELD!r} string ({e})",
                    f'write one {{"{TEXT_FIELD}": "..."}} object per line',
                ) from None
            if not isinstance(text, str):
                raise NxInputError(f"corpus file {label} line {lineno}", f"{TEXT_FIELD!r} is not a string",
                                   "store the document text as a string")
            doc_id = obj.get("id", lineno) if isinstance(obj, dict) else lineno
            yield f"{label}:{doc_id}", text


def _text(fh, label: str, gz: bool) -> Iterator[tuple[str, str]]:
    """A text file is one document, read in paragraph-aligned pieces so memory stays flat."""
    stream = io.TextIOWrapper(gzip.GzipFile(fileobj=fh) if gz else fh, encoding="utf-8", errors="replace")
    with stream:
        buf: list[str] = []
        size, part = 0, 0
        for line in stream:
            buf.append(line)
            size += len(line)
            if size > 1 << 20 and not line.strip():
                yield f"{label}:{part}", "".join(buf)
                buf, size, part = [], 0, part + 1
        if buf:
            yield f"{label}:{part}", "".join(buf)


def _parquet(fh, label: str) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(fh)
    if TEXT_FIELD not in pf.schema_arrow.names:
        raise NxInputError(f"corpus file {label}", f"has no {TEXT_FIELD!r} column", f"name the text column {TEXT_FIELD!r}")
    row = 0
    for batch in pf.iter_batches(columns=[TEXT_FIELD], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text:
                yield f"{label}:{row}", text
            row += 1
