"""Content hashes of input files (checkpoints, corpora), remembered between runs for big local files.

`sha256_files` returns the SHA-256 of each file's bytes. Local files of `MEMO_MIN_BYTES` and up have their
hash remembered in `NX_CACHE/sha256.json`, keyed by (resolved path, size, mtime in ns, inode): each layer
partition of a GPT-2 XL run opens the checkpoint, and hashing 6 GB each time would cost seconds apiece.
A changed file changes its size, mtime or inode and is hashed again. The memo is read once and written at
most once per call; a missing, damaged or read-only memo only costs the hashing time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import BinaryIO, Sequence

from nx_dagster import settings

log = logging.getLogger(__name__)
MEMO_MIN_BYTES = 1 << 24  # files at least this big have their hash remembered


def cache_root() -> Path:
    """NX_CACHE, else ~/.cache/nx_dagster: hashes and fetched checkpoints."""
    return settings.current().nx_cache


def sha256_stream(fh: BinaryIO) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def sha256_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """SHA-256 (hex) of each local file, in order; big files through the memo."""
    memo = cache_root() / "sha256.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):  # missing or damaged: only a cache miss
        known = {}
    out, learned = [], {}
    for p in paths:
        path = Path(p).resolve()
        st = path.stat()
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        digest = known.get(key)
        if digest is None:
            with open(path, "rb") as fh:
                digest = sha256_stream(fh)
            if st.st_size >= MEMO_MIN_BYTES:
                learned[str(path)] = (key, digest)
        out.append(digest)
    if learned:
        try:
            kept = {k: v for k, v in known.items() if k.split("|", 1)[0] not in learned}
            kept.update(dict(learned.values()))
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(kept))
            os.replace(tmp, memo)  # atomic: a concurrent reader sees the old or the new file
        except OSError as e:
            log.info("could not remember file hashes in %s: %s", memo, e)
    return out


def short_digest(obj: object, n: int = 10) -> str:
    """The first `n` hex digits of the SHA-256 of `obj` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]
