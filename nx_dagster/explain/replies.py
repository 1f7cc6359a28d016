"""Reading simulation replies: the 0–10 values of every token, or why a reply cannot be used.

- `parse_json_logprobs`: structured output {"activations": [...]}; each value's expected value over its
  `top_logprobs` alternatives that read 0..10 (never the written number when none does).
- `parse_logprob_free`: the written numbers.
- `parse_echo`: a completions echo; the distribution at each `unknown` placeholder. A misaligned echo is
  named for its cause: a BOS token before the prompt, shifted offsets, a different text, or a token that
  swallowed the placeholder.
Each returns (values, None) or (None, failure reason).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from functools import lru_cache
from typing import Sequence

Outcome = tuple[list[float] | None, str | None]
_DIGIT = re.compile(r"[\s,\[\]:]*(\d{1,2})[\s,\]]*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _json_numbers(choice: dict, n: int) -> tuple[str, list[re.Match]] | str:
    """The reply text and the match of each of its n numbers, or a failure reason."""
    message = choice.get("message") or {}
    if message.get("refusal"):
        return f"refused: {message['refusal'][:200]}"
    if choice.get("finish_reason") == "length":
        return "truncated structured output (finish_reason=length)"
    if choice.get("finish_reason") == "content_filter":
        return "refused: the endpoint's content filter stopped the reply"
    text = message.get("content") or ""
    try:
        values = json.loads(text)["activations"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"malformed structured output ({text[:80]!r})"
    if not isinstance(values, list) or len(values) != n:
        return f"structured output has {len(values) if isinstance(values, list) else 'no'} values for {n} tokens"
    bad = [v for v in values if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        return f"structured output has non-numeric values ({bad[0]!r})"
    bad = [v for v in values if not 0 <= v <= 10]
    if bad:
        return f"structured output has values outside 0..10 ({bad[0]!r})"
    start = text.index("[", text.index('"activations"'))
    matches = [m for m in _NUMBER.finditer(text, start)][:n]
    return text, matches


@lru_cache(maxsize=4096)
def _digit(token: str) -> str | None:
    """The 0..10 number a logprob token reads as (punctuation and spaces around it allowed), or None."""
    m = _DIGIT.fullmatch(token)
    return m.group(1) if m and int(m.group(1)) <= 10 else None


def _expected(alternatives: list[dict], sampled: str = "", split: bool = False) -> float | None:
    """Σ v·p / Σ p over the alternatives that read as 0..10. When the sampled number spans several tokens
    (tokenizers that split "10"), the digit it starts with stands for the whole number."""
    num = den = 0.0
    for alt in alternatives:
        d = _digit(alt.get("token", ""))
        if d is None:
            continue
        v = int(sampled) if split and d == sampled[0] else int(d)
        p = math.exp(alt["logprob"])
        num += v * p
        den += p
    return num / den if den > 0 else None


def parse_json_logprobs(choice: dict, n: int) -> Outcome:
    found = _json_numbers(choice, n)
    if isinstance(found, str):
        return None, found
    text, matches = found
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if not content or not any(c.get("top_logprobs") for c in content):
        return None, "the reply has no top_logprobs (this endpoint does not serve them; use logprob_free)"
    starts, pos = [], 0
    for c in content:
        starts.append(pos)
        pos += len(c["token"])
    if "".join(c["token"] for c in content) != text:
        return None, "the logprob tokens do not spell the reply"
    out, used = [], set()
    for i, m in enumerate(matches):
        k = bisect.bisect_right(starts, m.start()) - 1
        if k in used:
            return None, f"one logprob token ({content[k]['token']!r}) holds several values"
        used.add(k)
        split = starts[k] + len(content[k]["token"]) < m.end()
        value = _expected(content[k].get("top_logprobs") or [], m.group(), split)
        if value is None:
            return None, (f"no 0..10 number among the top_logprobs of value {i} (written {m.group()!r}): "
                          "no expected value")
        out.append(value)
    return out, None


def parse_logprob_free(choice: dict, n: int) -> Outcome:
    found = _json_numbers(choice, n)
    if isinstance(found, str):
        return None, found
    return [float(v) for v in json.loads(found[0])["activations"]], None


def echo_shift(prompt: str, tokens: list, text_offset: list) -> str | None:
    """A BOS token echoed before the prompt, or offsets that start past 0: the endpoint's echo is shifted
    as a whole (every request's). None when neither."""
    echoed = "".join(t if isinstance(t, str) else "" for t in tokens)
    if echoed != prompt and echoed.endswith(prompt):
        extra = echoed[:len(echoed) - len(prompt)]
        return f"the echo starts with {extra!r} (a BOS token) before the prompt: offsets are shifted by {len(extra)}"
    if text_offset and text_offset[0] != 0:
        return f"text_offset is shifted: the first token is at {text_offset[0]}, not 0 (a BOS token counted in the offsets)"
    return None


def _echo_misalignment(prompt: str, tokens: list, text_offset: list) -> str | None:
    """Why the echoed tokens and offsets do not line up with the prompt as a whole, or None if they do."""
    if len(tokens) != len(text_offset):
        return f"the echo has {len(tokens)} tokens but {len(text_offset)} text offsets"
    shift = echo_shift(prompt, tokens, text_offset)
    if shift:
        return shift
    echoed = "".join(t if isinstance(t, str) else "" for t in tokens)
    pos = 0
    for i, (tok, off) in enumerate(zip(tokens, text_offset)):
        if off != pos:
            return f"text_offset is shifted: token {i} is at {off} but the tokens before it span {pos} characters"
        pos += len(tok) if isinstance(tok, str) else 0
    if echoed != prompt:
        at = next((i for i, (a, b) in enumerate(zip(echoed, prompt)) if a != b), min(len(echoed), len(prompt)))
        return f"the echoed tokens do not spell the prompt (first difference at character {at} of {len(prompt)})"
    return None


def parse_echo(response: dict, offsets: Sequence[int], prompt: str | None = None) -> Outcome:
    """Expected values at the `unknown` placeholders (character `offsets` of `prompt`). The token found at
    each offset must read as the prompt does there; when it does not, the reason names what is misaligned
    (a BOS token, shifted offsets, a different text) or which token swallowed the placeholder."""
    logprobs = ((response.get("choices") or [{}])[0]).get("logprobs") or {}
    tops, text_offset, tokens = logprobs.get("top_logprobs"), logprobs.get("text_offset"), logprobs.get("tokens")
    if not tops or not text_offset:
        return None, "the completions reply has no echoed logprobs (the endpoint ignores echo; use json_logprobs)"
    if len(tops) != len(text_offset):
        return None, f"the echo has {len(tops)} top_logprobs entries for {len(text_offset)} tokens"
    index = {off: i for i, off in enumerate(text_offset)}
    out = []
    for j, off in enumerate(offsets):
        i = index.get(off)
        reads = i is not None and (tokens is None or prompt is None or (
            i < len(tokens) and isinstance(tokens[i], str) and prompt.startswith(tokens[i], off)))
        if not reads:
            why = _echo_misalignment(prompt, tokens, text_offset) if prompt is not None and tokens else None
            if why is None:
                k = bisect.bisect_right(text_offset, off) - 1
                held = repr(tokens[k]) if tokens and 0 <= k < len(tokens) else "?"
                why = (f"no token starts at value position {j} (character {off}): token {k} {held} spans it "
                       "(the tokenizer merged the placeholder with the text before it)")
            return None, why
        if not tops[i]:
            return None, f"the echo has no top_logprobs at value position {j} (token {i})"
        value = _expected([{"token": t, "logprob": lp} for t, lp in tops[i].items()])
        if value is None:
            return None, f"no 0..10 number among the top logprobs at value position {j} (token {i})"
        out.append(value)
    return out, None
