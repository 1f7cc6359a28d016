"""One rule for corpus bytes in every format: strict UTF-8, no NUL; a fault names file, line/row, byte."""

import gzip
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nx_dagster.corpus import decoding
from nx_dagster.corpus.documents import iter_documents
from nx_dagster.errors import NxInputError
from tests.checkpoints import build_checkpoint
from tests.test_bad_input import assert_untouched, run_cli

GOOD = "Paris is the capital of France. Ünïcödé — “quotes” and emoji 🐍 are fine.\n" * 30
LATIN1 = "the café sat on the mat.\n".encode("latin-1")  # 0xe9 is not UTF-8 on its own


def docs(path):
    return list(iter_documents(str(path)))


def error(path) -> str:
    with pytest.raises(NxInputError) as info:
        docs(path)
    message = str(info.value)
    assert str(path) in message and "Fix:" in message, message
    return message


def parquet(path, values, kind=pa.string()):
    pq.write_table(pa.table({"text": pa.array(values, kind)}), path)
    return path


def bad_string_parquet(path, values: list[bytes]):
    """A Parquet string column holding bytes that are not UTF-8 (writers other than pyarrow make these)."""
    raw = pa.array(values, pa.binary())
    return parquet(path, pa.Array.from_buffers(pa.string(), len(values), raw.buffers()), pa.string())


def test_valid_utf8_reads_the_same_in_every_format(tmp_path):
    (tmp_path / "a.txt").write_text(GOOD, encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(decoding.BOM + GOOD.replace("\n", "\r\n").encode())  # BOM and CRLF
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(GOOD.encode()))
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": GOOD}) + "\n")
    (tmp_path / "e.jsonl.gz").write_bytes(gzip.compress(decoding.BOM + json.dumps({"text": GOOD}).encode()))
    parquet(tmp_path / "f.parquet", [GOOD])
    parquet(tmp_path / "g.parquet", [GOOD.encode()], pa.binary())
    parquet(tmp_path / "h.parquet", pa.array([GOOD]).dictionary_encode(), pa.dictionary(pa.int32(), pa.string()))
    texts = {name: [t for _, t in docs(tmp_path / name)] for name in
             ("a.txt", "b.txt", "c.txt.gz", "d.jsonl", "e.jsonl.gz", "f.parquet", "g.parquet", "h.parquet")}
    assert all(t == [GOOD] for t in texts.values()), {k: v[0][:20] for k, v in texts.items()}


def test_pieces_split_characters_and_offsets_stay_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(decoding, "PIECE_BYTES", 5)  # every multi-byte character straddles some piece edge
    data = GOOD.encode()
    (tmp_path / "ok.txt").write_bytes(data)
    assert [t for _, t in docs(tmp_path / "ok.txt")] == [GOOD]
    for at in (0, 1, 40, len(data) - 1):  # a stray continuation byte anywhere, the last byte included
        bad = data[:at] + b"\x80" + data[at:]
        (tmp_path / "bad.txt").write_bytes(bad)
        message = error(tmp_path / "bad.txt")
        line = bad[:at].count(b"\n") + 1
        assert f"line {line} (byte {at})" in message and "0x80" in message, message
    (tmp_path / "cut.txt").write_bytes(data + "🐍".encode()[:2])  # a character cut off at the end
    assert f"(byte {len(data)})" in error(tmp_path / "cut.txt")


@pytest.mark.parametrize("fmt", ["txt", "txt.gz", "jsonl", "jsonl.gz", "parquet"])
def test_undecodable_bytes_are_named_in_every_format(fmt, tmp_path):
    path = tmp_path / f"corpus.{fmt}"
    first = json.dumps({"text": GOOD}).encode() + b"\n" if "jsonl" in fmt else GOOD.encode()
    second = b'{"text": "' + LATIN1.strip() + b'"}\n' if "jsonl" in fmt else LATIN1
    data = first + second
    if fmt == "parquet":
        bad_string_parquet(path, [GOOD.encode(), LATIN1])
    else:
        path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    message = error(path)
    assert "is not valid UTF-8 (byte 0xe9" in message and "re-encode the file as UTF-8" in message
    if fmt == "parquet":
        assert "row 1 (byte 7)" in message
    else:  # the offset is in the (decompressed) file, on the second line
        at = data.index(b"\xe9")
        assert f"line {GOOD.count(chr(10)) + 1 if fmt.startswith('txt') else 2} (byte {at})" in message


@pytest.mark.parametrize("kind", ["nul_in_text", "utf16", "random_bytes", "checkpoint", "nul_in_jsonl", "escaped_nul",
                                  "nul_in_parquet"])
def test_binary_input_is_refused(kind, tmp_path):
    if kind == "nul_in_text":
        path = tmp_path / "a.txt"
        path.write_bytes(GOOD.encode() + b"\0tail")
    elif kind == "utf16":
        path = tmp_path / "a.txt"
        path.write_bytes("plain words".encode("utf-16-le"))
    elif kind == "random_bytes":
        path = tmp_path / "program"  # no suffix: read as text, as NX_CORPUS=/bin/ls would be
        path.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64)
    elif kind == "checkpoint":
        path = build_checkpoint(tmp_path / "ck", n_layer=1, n_embd=16) / "model.safetensors"
    elif kind == "nul_in_jsonl":
        path = tmp_path / "a.jsonl"
        path.write_bytes(b'{"text": "a\0b"}\n')
    elif kind == "escaped_nul":
        path = tmp_path / "a.jsonl"
        path.write_text(json.dumps({"text": "a\0b"}) + "\n")
    else:
        path = parquet(tmp_path / "a.parquet", ["fine", "a\0b"])
    message = error(path)
    assert "NUL byte: binary data" in message and re.search(r"\((byte|character) \d+\)", message)


@pytest.mark.parametrize("kind", ["surrogate", "bad_gzip", "truncated_gzip", "not_parquet", "truncated_parquet",
                                  "int_column"])
def test_damaged_containers_are_named(kind, tmp_path):
    expected = {"surrogate": "lone UTF-16 surrogate", "bad_gzip": "not a valid gzip stream",
                "truncated_gzip": "not a valid gzip stream", "not_parquet": "not a readable Parquet file",
                "truncated_parquet": "not a readable Parquet file", "int_column": "has type int64, not text"}[kind]
    if kind == "surrogate":
        path = tmp_path / "a.jsonl"
        path.write_text('{"text": "fine"}\n{"text": "half a pair \\ud83d here"}\n')
    elif kind in ("bad_gzip", "truncated_gzip"):
        path = tmp_path / "a.txt.gz"
        whole = gzip.compress(GOOD.encode() * 50)
        path.write_bytes(b"not gzip at all" if kind == "bad_gzip" else whole[: len(whole) // 2])
    elif kind == "int_column":
        path = parquet(tmp_path / "a.parquet", [1, 2], pa.int64())
    else:
        path = parquet(tmp_path / "a.parquet", [GOOD] * 100)
        data = path.read_bytes()
        path.write_bytes(b"PAR1 but nothing else" if kind == "not_parquet" else data[:200] + data[-500:])
    assert expected in error(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(GOOD)
    path.chmod(0)
    assert "cannot be read" in error(path)


@pytest.mark.parametrize("kind", ["latin1_text", "binary_file", "bad_parquet"])
def test_cli_stops_before_any_table(kind, tmp_path, capsys):
    folder = build_checkpoint(tmp_path / "ck", n_layer=1, n_embd=16)
    if kind == "latin1_text":
        path = tmp_path / "c.txt"
        path.write_bytes(LATIN1 + GOOD.encode())
    elif kind == "binary_file":
        path = folder / "model.safetensors"
    else:
        path = bad_string_parquet(tmp_path / "c.parquet", [LATIN1 + GOOD.encode()])
    code, err, home = run_cli(tmp_path, capsys, "--model", str(folder), "--corpus", str(path))
    assert code == 2 and "nxd: error: corpus file" in err and "Fix:" in err and "Traceback" not in err, err
    assert_untouched(home)
