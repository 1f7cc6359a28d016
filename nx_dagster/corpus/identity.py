"""A corpus's identity: a readable name plus a short hash of its content and cutting settings.

`corpus_identity(spec)` is the `corpus` key of every row derived from the corpus and the data version of the
`sequences` asset: `train-3f2a9c1b0d` for `data/train.jsonl`. The hash covers every file's bytes (SHA-256,
big local files remembered by `nx_dagster.hashing`) with its name relative to the corpus root, the sequence
length and `max_sequences`, so two files called `train.jsonl` in different folders, a glob, an edited file
or another cut all get keys of their own, while moving or copying the same files keeps the key.
"""

from __future__ import annotations

import os
import posixpath
import re

from nx_dagster.corpus.documents import BUNDLED, BUNDLED_FILE, corpus_files, corpus_name
from nx_dagster.hashing import sha256_files, sha256_stream, short_digest

IDENTITY_VERSION = 1  # bump when the way documents become sequences changes


def _file_digests(files: list[str]) -> list[str]:
    local = all("://" not in f or f.startswith("file://") for f in files)
    if local:
        return sha256_files([f.removeprefix("file://") for f in files])
    import fsspec

    out = []
    for f in files:
        with fsspec.open(f, "rb") as fh:
            out.append(sha256_stream(fh))
    return out


def _relative_names(files: list[str]) -> list[str]:
    paths = [f.split("://", 1)[-1] for f in files]
    if len(paths) == 1:
        return [posixpath.basename(paths[0])]
    root = posixpath.commonpath([posixpath.dirname(p) for p in paths])
    return [posixpath.relpath(p, root) for p in paths]


def readable_name(source: str | None) -> str:
    """`bundled`, or the file / folder / glob's name without suffixes and glob characters."""
    name = corpus_name(source)
    if re.search(r"[*?\[\]]", name):
        parts = (source or "").split("://", 1)[-1].rstrip("/").split("/")
        stem = re.sub(r"[*?\[\]]+", "", name).strip("-_. ")
        parent = next((p for p in reversed(parts[:-1]) if p and not re.search(r"[*?\[\]]", p)), "")
        name = "-".join(x for x in (parent, stem) if x) or "corpus"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def corpus_identity(source: str | None, seq_len: int, max_sequences: int | None) -> str:
    """`<readable name>-<10 hex digits>`; reads every file once (big local files: once per change)."""
    source = (source or "").strip() or BUNDLED
    files = [str(BUNDLED_FILE)] if source == BUNDLED else corpus_files(source)
    names = [os.path.basename(files[0])] if source == BUNDLED else _relative_names(files)
    digest = short_digest({"v": IDENTITY_VERSION, "files": sorted(zip(names, _file_digests(files))),
                           "seq_len": seq_len, "max_sequences": max_sequences})
    return f"{readable_name(source)}-{digest}"
