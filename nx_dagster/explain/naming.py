"""Which tokens an explanation names, read the way the offline methods read it.

An explanation that quotes tokens as JSON strings (the offline explainer writes `fires on tokens: " The",
" the"`) names exactly those strings, leading space and case included: " The" is not "The" nor " the".
An explanation without quotes (prose from an LLM) names its words of two letters or more that are not
stop words, and a token matches a word case-blind, without its surrounding spaces.
"""

from __future__ import annotations

import json
import re
from typing import Callable

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_STOP = {"the", "an", "of", "and", "or", "to", "in", "on", "for", "with", "is", "are", "this", "that", "word",
         "words", "token", "tokens", "neuron", "fires", "fire", "like", "such", "as"}


def quoted_tokens(explanation: str) -> set[str]:
    """The JSON-quoted strings of an explanation, exactly as written."""
    out = set()
    for literal in _QUOTED.findall(explanation):
        try:
            out.add(json.loads(literal))
        except json.JSONDecodeError:
            continue
    return out


def named_words(explanation: str) -> set[str]:
    """The lower-cased words an unquoted explanation names."""
    return {w for w in re.findall(r"\w+", explanation.lower()) if len(w) > 1 and w not in _STOP}


def token_matcher(explanation: str) -> Callable[[str], bool]:
    """A test of whether a token is named by `explanation` (see the module's rule)."""
    quoted = quoted_tokens(explanation)
    if quoted:
        return lambda token: token in quoted
    words = named_words(explanation)
    return lambda token: bool(token.strip()) and token.strip().lower() in words
