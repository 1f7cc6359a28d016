"""The project's own prompt wording for explaining and simulating neurons.

Activations are shown as `token<TAB>value` lines, value a whole number 0–10: `floor(10·a / max)`, with
`max` the largest activation among the records shown and negatives shown as 0. Tokens are shown with
tabs, newlines and carriage returns escaped so that one token is one line.

Changing any wording here changes what the LLM is asked: bump the matching version, which is part of
the explanation ids and of the Dagster code versions.
"""

from __future__ import annotations

import math
from typing import Sequence

EXPLAIN_PROMPT_VERSION = "explain-v1"
SIMULATE_JSON_PROMPT_VERSION = "simulate-json-v1"
SIMULATE_ECHO_PROMPT_VERSION = "simulate-echo-v1"
UNKNOWN = "unknown"
_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})

_EXPLAIN_SYSTEM = (
    "You are studying one neuron inside a language model. You will see text excerpts, one token per line. "
    "After each token comes a tab and the neuron's activation on that token, scaled to a whole number from "
    "0 (silent) to 10 (the strongest activation in these excerpts). Work out what the neuron responds to: "
    "look at the tokens with high values and at what they have in common, including the words just before "
    "them. Tokens at 0 matter only as contrast."
)
_EXPLAIN_ASK = (
    "Describe what this neuron responds to in one short phrase (under 15 words). "
    "Answer with exactly one line of the form:\nExplanation: <phrase>"
)
_SIMULATE_SYSTEM = (
    "You simulate one neuron inside a language model. Given a description of what the neuron responds to, "
    "estimate its activation on every token of a text as a whole number from 0 (silent) to 10 (its "
    "strongest). Most tokens are 0; give high values only to tokens that match the description."
)
_ECHO_HEADER = (
    "Each block below describes one neuron inside a language model, then lists a text one token per line. "
    "After each token comes a tab and the neuron's activation on that token, a whole number from 0 (silent) "
    "to 10 (strongest).\n\n"
)
_ECHO_EXAMPLE = (
    ("days of the week", [("We", 0), (" met", 0), (" on", 0), (" Friday", 9), (" and", 0), (" again", 0),
                          (" on", 0), (" Sunday", 10), (".", 0)]),
)


def one_line(text: str) -> str:
    """An explanation as one line (whitespace runs, newlines included, become one space)."""
    return " ".join(text.split())


def show_token(token: str) -> str:
    return token.translate(_ESCAPES)


def scale_activations(activations: Sequence[float], max_activation: float) -> list[int]:
    """Integers 0–10: floor(10·a/max), negatives and NaN to 0. `max_activation` must be > 0."""
    out = []
    for a in activations:
        v = math.floor(10 * a / max_activation) if a > 0 else 0
        out.append(min(10, max(0, v)))
    return out


def explain_messages(excerpts: Sequence[tuple[Sequence[str], Sequence[float]]]) -> list[dict[str, str]]:
    """Chat messages asking for one explanation of the neuron from `excerpts` (tokens, raw activations)."""
    max_act = max((a for _, acts in excerpts for a in acts), default=0.0)
    if not max_act > 0:
        raise ValueError("no positive activation in the excerpts")
    blocks = []
    for i, (tokens, acts) in enumerate(excerpts, start=1):
        lines = [f"{show_token(t)}\t{v}" for t, v in zip(tokens, scale_activations(acts, max_act))]
        blocks.append(f"Excerpt {i}:\n" + "\n".join(lines))
    return [{"role": "system", "content": _EXPLAIN_SYSTEM},
            {"role": "user", "content": "\n\n".join(blocks) + "\n\n" + _EXPLAIN_ASK}]


def simulate_messages(explanation: str, tokens: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking for the 0–10 activation of every token as JSON {"activations": [...]}."""
    lines = "\n".join(f"{i}\t{show_token(t)}" for i, t in enumerate(tokens))
    user = (f"Neuron description: {one_line(explanation)}\n\n"
            f"Tokens, one per line as index<TAB>token:\n{lines}\n\n"
            f'Answer with a JSON object {{"activations": [...]}} holding exactly {len(tokens)} whole numbers '
            "from 0 to 10, one per token, in order.")
    return [{"role": "system", "content": _SIMULATE_SYSTEM}, {"role": "user", "content": user}]


ACTIVATIONS_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "neuron_activations",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"activations": {"type": "array", "items": {"type": "integer"}}},
            "required": ["activations"],
            "additionalProperties": False,
        },
    },
}


def _echo_block(explanation: str, rows: Sequence[tuple[str, str]]) -> str:
    body = "\n".join(f"{show_token(t)}\t{v}" for t, v in rows)
    return f"Neuron description: {one_line(explanation)}\nActivations:\n<start>\n{body}\n<end>\n\n"


def echo_prompt(explanation: str, tokens: Sequence[str]) -> tuple[str, list[int]]:
    """A completions prompt whose last block reads `token<TAB>unknown`, and the character offset of each
    `unknown` (the position whose predicted distribution over "0".."10" is the simulation)."""
    prompt = _ECHO_HEADER + "".join(_echo_block(d, [(t, str(v)) for t, v in rows]) for d, rows in _ECHO_EXAMPLE)
    head = prompt + f"Neuron description: {one_line(explanation)}\nActivations:\n<start>\n"
    offsets, pos, lines = [], len(head), []
    for t in tokens:
        shown = show_token(t)
        offsets.append(pos + len(shown) + 1)
        lines.append(f"{shown}\t{UNKNOWN}")
        pos += len(shown) + 1 + len(UNKNOWN) + 1
    return head + "\n".join(lines) + "\n<end>\n", offsets
