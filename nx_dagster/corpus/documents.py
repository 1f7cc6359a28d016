"""Where documents come from: the bundled corpus, or the user's text / JSONL / Parquet files
(local paths, globs or fsspec URLs). Each yields (document id, text) in a deterministic order."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nx_dagster.corpus import decoding
from nx_dagster.errors import NxInputError

BUNDLED = "bundled"
BUNDLED_FILE = Path(__file__).resolve().parent.parent / "bundled" / "corpus" / "python_docs.jsonl.gz"
TEXT_FIELD = "text"
_TEXT_TYPES = {"string", "large_string", "string_view", "binary", "large_binary", "binary_view"}
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
    """(document id, text) of every document, in a deterministic order. Bytes become text by the one
    rule of `decoding` (strict UTF-8, no NUL) in every format; bad input raises NxInputError."""
    source = (source or "").strip() or BUNDLED
    if source == BUNDLED:
        with BUNDLED_FILE.open("rb") as fh:
            yield from _jsonl(fh, BUNDLED, str(BUNDLED_FILE), gz=True)
        return
    import fsspec

    for path in corpus_files(source):
        label = path.rsplit("/", 1)[-1]
        try:
            with fsspec.open(path, "rb") as raw:
                # remote files (s3fs, http) have no readline(size): a standard buffered reader over them
                fh = raw if "://" not in path or path.startswith("file://") else io.BufferedReader(raw, 1 << 20)
                if path.endswith(".parquet"):
                    yield from _parquet(fh, label, path)
                elif path.endswith((".jsonl", ".json", ".jsonl.gz")):
                    yield from _jsonl(fh, label, path, gz=path.endswith(".gz"))
                else:
                    yield from _text(fh, label, path, gz=path.endswith(".gz"))
        except OSError as e:  # unreadable (permissions, a vanished file, a dropped connection)
            raise NxInputError(f"corpus file {path}", f"cannot be read ({e.strerror or e})",
                               "check that the file exists and is readable, then run again") from None


@contextmanager
def _gunzipped(fh, path: str, gz: bool):
    """The decompressed stream of a .gz file (else `fh`); a damaged gzip stream is a named error."""
    if not gz:
        yield fh
        return
    try:
        with gzip.GzipFile(fileobj=fh) as stream:
            yield stream
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise NxInputError(f"corpus file {path}", f"is not a valid gzip stream ({e or type(e).__name__})",
                           "re-compress it with gzip, or drop the .gz suffix if it is not compressed") from None


def _jsonl(fh, label: str, path: str, gz: bool) -> Iterator[tuple[str, str]]:
    with _gunzipped(fh, path, gz) as stream:
        for lineno, line in decoding.lines(stream, path):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = obj[TEXT_FIELD] if isinstance(obj, dict) else obj
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise NxInputError(
                    f"corpus file {path} line {lineno}", f"is not a JSON object with a {TEXT_FIELD!r} string ({e})",
                    f'write one {{"{TEXT_FIELD}": "..."}} object per line',
                ) from None
            if not isinstance(text, str):
                raise NxInputError(f"corpus file {path} line {lineno}", f"{TEXT_FIELD!r} is not a string",
                                   "store the document text as a string")
            decoding.check_text(text, f"corpus file {path} line {lineno}")
            doc_id = obj.get("id", lineno) if isinstance(obj, dict) else lineno
            yield f"{label}:{doc_id}", text


def _text(fh, label: str, path: str, gz: bool) -> Iterator[tuple[str, str]]:
    """A text file is one document, read in paragraph-aligned pieces so memory stays flat. Line breaks
    are normalised to \n (\r\n and a lone \r alike)."""
    with _gunzipped(fh, path, gz) as stream:
        buf: list[str] = []
        size, part = 0, 0
        for _, line in decoding.lines(stream, path):
            line = line.replace("\r\n", "\n").replace("\r", "\n")
            buf.append(line)
            size += len(line)
            if size > 1 << 20 and not line.strip():
                yield f"{label}:{part}", "".join(buf)
                buf, size, part = [], 0, part + 1
        if buf:
            yield f"{label}:{part}", "".join(buf)


def _parquet(fh, label: str, path: str) -> Iterator[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def damaged(e: Exception) -> NxInputError:
        return NxInputError(f"corpus file {path}", f"is not a readable Parquet file ({e})",
                            "rewrite it with a Parquet writer (e.g. pyarrow.parquet.write_table), or give the "
                            "text as .txt or .jsonl")

    try:
        pf = pq.ParquetFile(fh)
    except (pa.ArrowException, OSError) as e:
        raise damaged(e) from None
    if TEXT_FIELD not in pf.schema_arrow.names:
        raise NxInputError(f"corpus file {path}", f"has no {TEXT_FIELD!r} column", f"name the text column {TEXT_FIELD!r}")
    kind = pf.schema_arrow.field(TEXT_FIELD).type
    if str(kind.value_type if pa.types.is_dictionary(kind) else kind) not in _TEXT_TYPES:
        raise NxInputError(f"corpus file {path}", f"column {TEXT_FIELD!r} has type {kind}, not text",
                           f"store the documents as a string column named {TEXT_FIELD!r}")
    row = 0
    batches = pf.iter_batches(columns=[TEXT_FIELD], batch_size=1024)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as e:
            raise damaged(e) from None
        if batch is None:
            return
        column = batch.column(0)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        # read the raw bytes (strings are not trusted to be valid UTF-8) and decode them by the one rule
        for value in column.cast(pa.large_binary()).to_pylist():
            if value:
                yield f"{label}:{row}", decoding.decode_value(value, f"corpus file {path} row {row}")
            row += 1
