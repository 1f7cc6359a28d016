"""One token decoder for every table: lossless, distinct per id, `<|endoftext|>` as its text."""

import random

import pytest
from tokenizers import Tokenizer

from nx_dagster.activations import RecorderSettings
from nx_dagster.corpus import CorpusSpec
from nx_dagster.errors import NxInputError
from nx_dagster.model import open_checkpoint
from nx_dagster.model.checkpoint import BUNDLED_DIR
from nx_dagster.model.token_strings import TokenStrings, render, token_bytes
from nx_dagster.stages.activations import write_activations, write_sequences
from nx_dagster.stages.connections import write_connections
from nx_dagster.storage import Catalog
from nx_dagster.subject import Subject
from tests.checkpoints import build_checkpoint, word_tokenizer

EOT = "<|endoftext|>"
TEXT = (f"Café crème, naïve façade — 🐍 Python “quotes” {EOT}The cat sat on the mat. Ünïcödé 日本語 <0xAB> "
        "literal. ") * 12


def with_eot(tok: Tokenizer) -> Tokenizer:
    tok.add_special_tokens([EOT])
    return tok


def tokenizers():
    return {"bundled": Tokenizer.from_file(str(BUNDLED_DIR / "tokenizer.json")), "test": with_eot(word_tokenizer(300))}


@pytest.mark.parametrize("name", ["bundled", "test"])
def test_strings_are_distinct_lossless_and_agree_with_the_tokenizer(name):
    tok = tokenizers()[name]
    strings = TokenStrings(tok)
    n = tok.get_vocab_size(with_added_tokens=True)
    assert len(strings) == n and len(set(strings.strings)) == n  # injective over the whole vocabulary
    partial = 0
    for i, s in enumerate(strings.strings):
        data = token_bytes(s)
        assert render(data) == s
        # the tokenizer's own decode is the same bytes, lossy only where they are not UTF-8
        assert tok.decode([i], skip_special_tokens=False) == data.decode("utf-8", errors="replace"), i
        partial += "\ufffd" in tok.decode([i])
    assert partial > 50  # the tokens that used to collapse to U+FFFD are really there
    assert strings[tok.token_to_id(EOT)] == EOT


@pytest.mark.parametrize("name", ["bundled", "test"])
def test_joined_tokens_give_back_the_text(name):
    tok = tokenizers()[name]
    strings = TokenStrings(tok)
    ids = tok.encode(TEXT, add_special_tokens=False).ids
    assert b"".join(token_bytes(strings[i]) for i in ids).decode("utf-8") == TEXT  # always, byte for byte
    ascii_text = f"The cat sat on the mat.{EOT} Paris is the capital of France.\n\tone two"
    assert "".join(strings[i] for i in tok.encode(ascii_text, add_special_tokens=False).ids) == ascii_text


def test_render_is_injective_and_inverted_on_hostile_bytes():
    rng = random.Random(0)
    pieces = [b"<0xAB>", b"<0x3C>", b"<0x", b"<", b">", b"AB>", "é".encode(), "🐍".encode(), b"\xe2", b"\x80",
              b"\xff", b" ", b"a"]
    seen: dict[str, bytes] = {}
    for _ in range(20000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 5)))
        s = render(data)
        assert token_bytes(s) == data
        assert seen.setdefault(s, data) == data
    assert render(b"\xe2\x80") == "<0xE2><0x80>" and render(b" <0xE2>") == " <0x3C>0xE2>"


def test_byte_level_inside_a_decoder_sequence_and_other_tokenizers():
    from tokenizers import decoders, models

    tok = with_eot(word_tokenizer(300))
    plain = TokenStrings(tok).strings
    tok.decoder = decoders.Sequence([decoders.ByteLevel()])
    assert TokenStrings(tok).strings == plain
    wordlevel = Tokenizer(models.WordLevel({"[UNK]": 0, "cat": 1, "##s": 2}, unk_token="[UNK]"))
    assert TokenStrings(wordlevel).strings == ["[UNK]", "cat", "##s"]  # its own vocabulary pieces


def test_duplicate_token_text_is_refused():
    tok = word_tokenizer(300)
    assert tok.token_to_id("Ġcat") is not None
    tok.add_tokens([" cat"])  # an added token with its own id that reads exactly like vocabulary token "Ġcat"
    with pytest.raises(NxInputError, match=r"token ids \d+ and 300 the same text ' cat'"):
        TokenStrings(tok)


def test_every_table_uses_the_one_decoder(tmp_path):
    folder = build_checkpoint(tmp_path / "ck", n_layer=2, n_embd=16, n_head=2, vocab_size=301, tokenizer_vocab=300)
    with_eot(Tokenizer.from_file(str(folder / "tokenizer.json"))).save(str(folder / "tokenizer.json"))
    (tmp_path / "c.txt").write_text(TEXT * 4, encoding="utf-8")
    ckpt = open_checkpoint(str(folder))
    cat = Catalog(tmp_path / "home")
    s = Subject(ckpt, CorpusSpec(str(tmp_path / "c.txt"), 16))
    write_sequences(cat, s)
    write_activations(cat, s, ["post_fix"], [0, 1], RecorderSettings(top_k=3, random_k=2, quantile_k=1))
    write_connections(cat, ckpt, k=40)
    strings = TokenStrings(ckpt.load_tokenizer())
    seq = cat.query("SELECT unnest(token_ids) AS id, unnest(tokens) AS token FROM sequences").to_pylist()
    assert EOT in {r["token"] for r in seq} and "" not in {r["token"] for r in seq}
    for table in ("sequences", "token_connections", "token_activation_summary"):
        rows = seq if table == "sequences" else cat.query(f"SELECT token_id AS id, token FROM {table}").to_pylist()
        assert rows and all(r["token"] == strings[r["id"]] for r in rows), table
    assert any("<0x" in r["token"] for r in seq)  # partial UTF-8 tokens keep their bytes
