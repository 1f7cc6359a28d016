"""Build the bundled default corpus from text that every CPython install carries.

Two sources, both under the Python Software Foundation License:

- `pydoc_data.topics`: the language-reference topics that `help()` shows, one document per topic.
- the docstrings of a fixed list of standard-library modules, one document per module: the module's
  docstring, then each public class and function (and each public method of those classes) as its
  name, its signature where one is known, and its docstring.

The result is frozen into `bundled/corpus/python_docs.jsonl.gz`, one `{"id", "text"}` object per line, in
a fixed order (topics sorted by name, then the modules in `MODULES` order). The shipped file is the
corpus; this module regenerates it:

    python -m tools.build_corpus

Docstrings change between Python versions, so a rebuild on another version gives a different file; the
version that built the shipped one is recorded in `bundled/corpus/SOURCE.md`.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import inspect
import io
import json
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

CORPUS_PATH = Path(__file__).resolve().parent.parent / "nx_dagster" / "bundled" / "corpus" / "python_docs.jsonl.gz"

# Modules whose docstrings join the corpus, in corpus order. Chosen for prose-rich docstrings and for
# importing cleanly, without side effects, on every platform.
MODULES: tuple[str, ...] = (
    "string", "re", "json", "os", "os.path", "pathlib", "collections", "collections.abc", "itertools",
    "functools", "typing", "dataclasses", "enum", "abc", "contextlib", "inspect", "argparse", "logging",
    "logging.handlers", "unittest", "unittest.mock", "datetime", "calendar", "decimal", "fractions",
    "statistics", "random", "math", "cmath", "heapq", "array", "struct", "codecs", "io", "shutil",
    "tempfile", "glob", "fnmatch", "subprocess", "threading", "queue", "asyncio", "socket", "ssl",
    "http.client", "http.server", "http.cookies", "urllib.parse", "urllib.request", "email.message",
    "email.utils", "smtplib", "ftplib", "xml.etree.ElementTree", "csv", "configparser", "sqlite3",
    "zipfile", "tarfile", "gzip", "bz2", "lzma", "zlib", "hashlib", "hmac", "secrets", "base64",
    "binascii", "pickle", "copy", "pprint", "textwrap", "difflib", "doctest", "pdb", "traceback",
    "warnings", "weakref", "gc", "types", "operator", "numbers", "ast", "dis", "tokenize", "importlib",
    "pkgutil", "time", "sched", "selectors", "signal", "uuid", "ipaddress", "locale", "gettext", "shlex",
    "cmd", "optparse", "getopt", "mailbox", "imaplib", "poplib", "wave", "colorsys", "zoneinfo",
    "graphlib", "contextvars", "concurrent.futures", "timeit", "trace", "pstats", "filecmp", "fileinput",
    "netrc", "plistlib", "quopri", "reprlib", "codeop", "tracemalloc", "unicodedata", "socketserver",
    "xmlrpc.client",
)

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def clean(text: str | None) -> str:
    """Dedent a docstring, strip trailing spaces and collapse runs of blank lines."""
    if not text:
        return ""
    lines = [line.rstrip() for line in inspect.cleandoc(text).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def topic_documents() -> Iterator[dict[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = clean(topics[name])
        if text:
            yield {"id": f"pydoc_topics/{name}", "text": text}


def _signature(obj: object) -> str:
    try:
        sig = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return "" if _ADDRESS.search(sig) else sig  # a default's repr holding a memory address is not stable


def _members(module) -> list[tuple[str, object]]:
    """Public classes and routines of a module: those in `__all__`, else those it defines itself."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        own = True
    else:
        own = False
    out = []
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if own and getattr(obj, "__module__", None) != module.__name__:
            continue
        out.append((name, obj))
    return out


def _methods(cls: type) -> list[tuple[str, object]]:
    out = []
    for name, attr in sorted(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if inspect.isroutine(attr) or isinstance(attr, property):
            out.append((name, attr))
    return out


def module_document(name: str, seen: set[str]) -> dict[str, str] | None:
    """One module's docstrings as one document; docstrings already in `seen` are left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(name)
    parts = []
    head = clean(module.__doc__)
    if head and head not in seen:
        seen.add(head)
        parts.append(f"Module {name}\n\n{head}")
    for member, obj in _members(module):
        entries = [(member, obj)]
        if inspect.isclass(obj):
            entries += [(f"{member}.{m}", attr) for m, attr in _methods(obj)]
        for qualname, attr in entries:
            raw = getattr(attr, "__doc__", None)
            doc = clean(raw) if isinstance(raw, str) else ""
            if not doc or doc in seen:
                continue
            seen.add(doc)
            sig = "" if isinstance(attr, property) else _signature(attr)
            parts.append(f"{name}.{qualname}{sig}\n\n{doc}")
    if not parts:
        return None
    return {"id": f"docstrings/{name}", "text": "\n\n\n".join(parts)}


def build_documents() -> list[dict[str, str]]:
    docs = list(topic_documents())
    seen: set[str] = set()
    for name in MODULES:
        doc = module_document(name, seen)
        if doc is not None:
            docs.append(doc)
    return docs


def write_corpus(docs: list[dict[str, str]], path: Path = CORPUS_PATH) -> None:
    """Byte-for-byte reproducible: fixed key order, no timestamp in the gzip header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps({"id": d["id"], "text": d["text"]}, ensure_ascii=False) + "\n" for d in docs)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(payload.encode("utf-8"))
    tmp = path.with_suffix(".part")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def read_corpus(path: Path = CORPUS_PATH) -> list[dict[str, str]]:
    """The documents of a corpus file written by `write_corpus`, in file order."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CORPUS_PATH, help="where to write the .jsonl.gz file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    docs = build_documents()
    write_corpus(docs, args.out)
    n_chars = sum(len(d["text"]) for d in docs)
    n_bytes = sum(len(d["text"].encode("utf-8")) for d in docs)
    log.info(
        "wrote %s: %d documents, %d characters, %d UTF-8 bytes of text, %d bytes on disk (Python %s)",
        args.out, len(docs), n_chars, n_bytes, args.out.stat().st_size, sys.version.split()[0],
    )


if __name__ == "__main__":
    main()
