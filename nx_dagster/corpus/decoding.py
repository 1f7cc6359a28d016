"""The one rule for turning corpus bytes into text, shared by every format (text, JSONL, gzip, Parquet).

- Text is strict UTF-8. An undecodable byte stops the run with an `NxInputError` naming the file, the
  line (Parquet: the row) and the byte offset (counted in the decompressed stream for `.gz` files), and
  the fix: re-encode as UTF-8. Nothing is replaced by U+FFFD or skipped.
- A NUL byte (U+0000) marks binary input (an executable, a checkpoint, an image): refused the same way.
- A leading UTF-8 byte-order mark is dropped.
"""

from __future__ import annotations

import codecs
from typing import BinaryIO, Iterator

from nx_dagster.errors import NxInputError

PIECE_BYTES = 1 << 20  # bytes read at a time: binary input fails within the first MiB
BOM = codecs.BOM_UTF8
REENCODE = "re-encode the file as UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8 in > out`) or remove the stray bytes"
NOT_TEXT = ("give UTF-8 text, JSONL or Parquet corpus files only (re-encode UTF-16 text as UTF-8): NX_CORPUS "
            "names a binary file, or a folder or glob that holds one")


def undecodable(where: str, data: bytes, start: int, reason: str) -> NxInputError:
    return NxInputError(where, f"is not valid UTF-8 (byte 0x{data[start]:02x}: {reason})", REENCODE)


def binary(where: str) -> NxInputError:
    return NxInputError(where, "holds a NUL byte: binary data (or UTF-16/32 text), not UTF-8 text", NOT_TEXT)


def lines(fh: BinaryIO, path: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line text with its line break) of a binary stream, strictly decoded.

    Memory is one line (read a MiB at a time, so a NUL byte is found without reading a whole file)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, lineno, parts = 0, 1, []
    while True:
        piece = fh.readline(PIECE_BYTES)
        if offset == 0 and piece.startswith(BOM):
            piece, offset = piece[len(BOM):], len(BOM)
        if not piece:
            break
        pending = len(decoder.getstate()[0])  # bytes of a character split across two pieces
        nul = piece.find(b"\0")
        if nul >= 0:
            raise binary(f"corpus file {path} line {lineno} (byte {offset + nul})")
        try:
            parts.append(decoder.decode(piece))
        except UnicodeDecodeError as e:
            where = f"corpus file {path} line {lineno} (byte {offset - pending + e.start})"
            raise undecodable(where, e.object, e.start, e.reason) from None
        offset += len(piece)
        if piece.endswith(b"\n"):
            yield lineno, "".join(parts)
            parts, lineno = [], lineno + 1
    pending = len(decoder.getstate()[0])
    try:
        parts.append(decoder.decode(b"", final=True))
    except UnicodeDecodeError as e:
        where = f"corpus file {path} line {lineno} (byte {offset - pending + e.start})"
        raise undecodable(where, e.object, e.start, e.reason) from None
    if any(parts):
        yield lineno, "".join(parts)


def check_text(text: str, where: str) -> str:
    """A document already decoded (JSON strings): refuse NUL and lone surrogates (`"\\ud800"`), which
    no UTF-8 byte sequence encodes; returns the text."""
    if "\0" in text:
        raise binary(f"{where} (character {text.index(chr(0))})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise NxInputError(f"{where} (character {e.start})",
                           f"holds {text[e.start]!r}, a lone UTF-16 surrogate that is not text", REENCODE) from None
    return text


def decode_value(value: bytes, where: str) -> str:
    """One stored value (a Parquet cell) -> text, by the same rule."""
    nul = value.find(b"\0")
    if nul >= 0:
        raise binary(f"{where} (byte {nul})")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise undecodable(f"{where} (byte {e.start})", value, e.start, e.reason) from None
