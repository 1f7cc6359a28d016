"""Which tokens an explanation names, read the way the offline methods read it.

An explanation that quotes tokens as JSON strings (the offline explainer writes `fires on tokens: " The",
" the"`) names exactly those strings, leading space and case included: " The" is not "The" nor " the".
An explanation without quotes (prose from an LLM) names its words of two letters or more that are not
stop words, and a token matches a word case-blind, without its surrounding spaces.
"""

from __future__ import annotations

import json
import re

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


class TokenMatcher:
    """Whether a token is named by an explanation (see the module's rule); `any_of` for many tokens."""

    def __init__(self, explanation: str):
        self.quoted = quoted_tokens(explanation)
        self.words = set() if self.quoted else named_words(explanation)

    def __call__(self, token: str) -> bool:
        if self.quoted:
            return token in self.quoted
        return bool(token.strip()) and token.strip().lower() in self.words

    def any_of(self, tokens) -> bool:
        if self.quoted:
            return not self.quoted.isdisjoint(tokens)
        return any(self(t) for t in tokens)


def token_matcher(explanation: str) -> TokenMatcher:
    return TokenMatcher(explanation)
