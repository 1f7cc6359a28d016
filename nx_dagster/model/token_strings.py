"""The one token-id -> string decoder, used by every table (`sequences.tokens`, `token_connections.token`,
`token_activation_summary.token`) and so by everything an explainer or simulator sees.

A token's string is lossless and distinct per id:
- a byte-level BPE token (GPT-2's tokenizers) is its bytes read as UTF-8: leading spaces kept
  (`" Python"`), and each byte that is not part of a complete UTF-8 character (a token holding half
  of "é" or of an emoji) written `<0xC3>` (uppercase hex, the byte-fallback convention), so the 100+
  partial tokens no longer all collapse to U+FFFD;
- an added or special token is its own text: `<|endoftext|>`, never "";
- a literal `<0xHH>` inside a token's text has its `<` written `<0x3C>`, so no text can pass for a
  byte: `token_bytes` reads every string back to exactly the token's bytes, and where a sequence's
  bytes are valid UTF-8 its strings joined are the text itself;
- for a tokenizer that is not byte-level BPE, its own vocabulary piece (`id_to_token`).
Ids the tokenizer does not know (a model vocabulary padded past the tokenizer's) map to None (NULL).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from nx_dagster.errors import NxInputError

_BYTE = re.compile(r"<0x([0-9A-F]{2})>")


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, char -> byte: printable Latin-1 bytes stand for themselves, the other
    68 bytes take the characters from U+0100 upward in byte order (the published GPT-2 encoder's map)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(0x100 + extra)] = b
            extra += 1
    return chars


BYTE_OF_CHAR = _byte_alphabet()
_ALPHABET = frozenset(BYTE_OF_CHAR)
_TO_LATIN1 = str.maketrans({c: chr(b) for c, b in BYTE_OF_CHAR.items()})


def piece_bytes(piece: str) -> bytes:
    """A byte-level BPE vocabulary piece -> its bytes (a character outside the alphabet: its UTF-8)."""
    if _ALPHABET.issuperset(piece):
        return piece.translate(_TO_LATIN1).encode("latin-1")
    return b"".join(bytes([BYTE_OF_CHAR[c]]) if c in BYTE_OF_CHAR else c.encode("utf-8") for c in piece)


def _escape(text: str) -> str:
    """A literal `<0xHH>` in token text gets its `<` written `<0x3C>`, so it cannot pass for a byte."""
    return _BYTE.sub(r"<0x3C>0x\1>", text) if "<0x" in text else text


def render(data: bytes) -> str:
    """Token bytes -> display string: complete UTF-8 characters as text, stray bytes as `<0xHH>`."""
    out, i = [], 0
    while True:
        try:
            out.append(_escape(data[i:].decode("utf-8")))
            return "".join(out)
        except UnicodeDecodeError as e:  # e.start: the first stray byte of data[i:]
            out.append(_escape(data[i:i + e.start].decode("utf-8")) + f"<0x{data[i + e.start]:02X}>")
            i += e.start + 1


def token_bytes(string: str) -> bytes:
    """The inverse of `render`: a display string -> the token's bytes."""
    out, at = bytearray(), 0
    for m in _BYTE.finditer(string):
        out += string[at:m.start()].encode("utf-8")
        out.append(int(m.group(1), 16))
        at = m.end()
    return bytes(out + string[at:].encode("utf-8"))


class TokenStrings:
    """Every token id's display string, built once per tokenizer; `strings[i]` or `column(ids)`."""

    def __init__(self, tokenizer, label: str = "tokenizer"):
        added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
        # byte-level BPE: a ByteLevel decoder, alone or inside a decoders.Sequence
        byte_level = tokenizer.decoder is not None and b'"type":"ByteLevel"' in tokenizer.decoder.__getstate__()
        self.strings: list[str | None] = []
        for i in range(tokenizer.get_vocab_size(with_added_tokens=True)):
            piece = tokenizer.id_to_token(i)
            if piece is None:
                self.strings.append(None)
            elif i in added:
                self.strings.append(render(added[i].encode("utf-8")))
            elif byte_level:
                self.strings.append(render(piece_bytes(piece)))
            else:
                self.strings.append(piece)
        seen: dict[str, int] = {}
        for i, s in enumerate(self.strings):
            if s is not None and seen.setdefault(s, i) != i:
                raise NxInputError(label, f"gives token ids {seen[s]} and {i} the same text {s!r}",
                                   "remove the duplicate (added) token from tokenizer.json")

    def __len__(self) -> int:
        return len(self.strings)

    def __getitem__(self, token_id: int) -> str | None:
        return self.strings[token_id] if 0 <= token_id < len(self.strings) else None

    def column(self, ids: np.ndarray) -> pa.Array:
        """A string column for an array of token ids (NULL for ids past the tokenizer's vocabulary)."""
        uniq, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        dictionary = pa.array([self[int(i)] for i in uniq], type=pa.string())
        return pa.DictionaryArray.from_arrays(inverse.astype(np.int32).reshape(-1), dictionary).dictionary_decode()
