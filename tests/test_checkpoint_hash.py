"""The checkpoint hash (the data version of everything downstream) is remembered, never stale."""

import hashlib
import json
import os

from nx_dagster import hashing
from nx_dagster.model.checkpoint import open_checkpoint
from tests.checkpoints import build_checkpoint


def test_hash_is_remembered_and_follows_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("NX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "MEMO_MIN_BYTES", 0)
    folder = build_checkpoint(tmp_path / "m", n_layer=1, n_embd=16, n_head=2)
    weights = folder / "model.safetensors"
    first = open_checkpoint(str(folder))
    assert first.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    memo = tmp_path / "cache" / "sha256.json"
    known = json.loads(memo.read_text())
    assert len(known) == 3
    # the remembered value is what a second open uses (no re-read of the file)...
    key = next(k for k in known if k.startswith(str(weights.resolve())))
    known[key] = "f" * 64
    memo.write_text(json.dumps(known))
    assert open_checkpoint(str(folder)).sha256 == "f" * 64
    # ...until the file changes: new weights, new hash, new data version
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(1, 1))
    changed = open_checkpoint(str(folder))
    assert changed.sha256 == hashlib.sha256(bytes(data)).hexdigest() != first.sha256
    assert changed.data_version != first.data_version
    # a damaged memo is only a cache miss
    memo.write_text("{not json")
    assert open_checkpoint(str(folder)).sha256 == changed.sha256
