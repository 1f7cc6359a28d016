"""Simulators: from an explanation, predict the neuron's activation (0–10 scale) on every token.

Each is a named choice; every one returns per-token expected values or a failure_reason:
- `json_logprobs` — a chat model answers {"activations": [...]} as structured output; the expected value
  at each number is Σ v·p(v) / Σ p(v) over the alternatives in `top_logprobs` that read 0..10. A number
  with no 0..10 alternative among its top_logprobs fails the sequence (never the written number instead).
- `echo_logprobs` — one completions request with echo and logprobs over a prompt whose target lines read
  `token<TAB>unknown`; the expected value comes from the distribution at each `unknown` (the original
  all-at-once method). Endpoints that reject echo (OpenAI) stop the run with a clear message.
- `logprob_free` — the same chat request without logprobs; the written numbers are the values.
- `token_lookup` — offline: reads only the explanation text, 10 for the tokens it names, else 0.

A reply that cannot be used (see the failure reasons below) is marked `unusable` in the ledger and the
sequence is re-asked (`LLMClient.map_usable`, `reasks` more times per run) before it fails.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
from functools import lru_cache
from typing import Sequence

from nx_dagster.errors import NxInputError
from nx_dagster.explain.llm import LLMClient, LLMRequest, LLMResult
from nx_dagster.explain.prompts import (
    ACTIVATIONS_SCHEMA, SIMULATE_ECHO_PROMPT_VERSION, SIMULATE_JSON_PROMPT_VERSION, echo_prompt, simulate_messages,
)
from nx_dagster.explain.records import (
    CALIBRATION_SPLIT, SCORED_SPLIT, ActivationRecord, Explanation, NeuronRecords, Simulation,
)

log = logging.getLogger(__name__)
TOKEN_LOOKUP, JSON_LOGPROBS, ECHO_LOGPROBS, LOGPROB_FREE = "token_lookup", "json_logprobs", "echo_logprobs", \
    "logprob_free"
SIMULATOR_VERSIONS = {TOKEN_LOOKUP: "token-lookup-v1", JSON_LOGPROBS: SIMULATE_JSON_PROMPT_VERSION,
                      LOGPROB_FREE: SIMULATE_JSON_PROMPT_VERSION, ECHO_LOGPROBS: SIMULATE_ECHO_PROMPT_VERSION}
SIMULATORS = tuple(SIMULATOR_VERSIONS)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_STOP = {"the", "an", "of", "and", "or", "to", "in", "on", "for", "with", "is", "are", "this", "that", "word",
         "words", "token", "tokens", "neuron", "fires", "fire", "like", "such", "as"}
_DIGIT = re.compile(r"[\s,\[\]:]*(\d{1,2})[\s,\]]*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
Outcome = tuple[list[float] | None, str | None]


class EchoUnsupportedError(NxInputError):
    """The endpoint refuses completions with echo + logprobs."""


def token_lookup_values(explanation: str, tokens: Sequence[str]) -> list[float]:
    """10 for tokens named in the explanation (its JSON-quoted tokens, or else its words), 0 elsewhere."""
    named: set[str] = set()
    for lit in _QUOTED.findall(explanation):
        try:
            named.add(json.loads(lit).strip().lower())
        except json.JSONDecodeError:
            continue
    if not named:
        named = {w for w in re.findall(r"\w+", explanation.lower()) if len(w) > 1 and w not in _STOP}
    return [10.0 if t.strip().lower() in named and t.strip() else 0.0 for t in tokens]


def simulation_request(simulator: str, explanation: str, tokens: Sequence[str], model: str,
                       top_logprobs: int = 20) -> LLMRequest:
    if simulator == ECHO_LOGPROBS:
        prompt, _ = echo_prompt(explanation, tokens)
        return LLMRequest("completion", model, {"prompt": prompt, "max_tokens": 0, "echo": True,
                                                "logprobs": min(top_logprobs, 20), "temperature": 0.0})
    params: dict = {"messages": simulate_messages(explanation, tokens), "max_tokens": 4 * len(tokens) + 32,
                    "temperature": 0.0, "response_format": ACTIVATIONS_SCHEMA}
    if simulator == JSON_LOGPROBS:
        params.update(logprobs=True, top_logprobs=top_logprobs)
    return LLMRequest("chat", model, params)


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


def _echo_shift(prompt: str, tokens: list, text_offset: list) -> str | None:
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
    shift = _echo_shift(prompt, tokens, text_offset)
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


def _outcome(simulator: str, result: LLMResult, tokens: Sequence[str], explanation: str) -> Outcome:
    """Values from an `ok` reply, or why it is unusable."""
    if simulator == ECHO_LOGPROBS:
        prompt, offsets = echo_prompt(explanation, tokens)
        return parse_echo(result.response or {}, offsets, prompt)
    choices = (result.response or {}).get("choices") or []
    if not choices:
        return None, "the reply has no choices"
    parse = parse_json_logprobs if simulator == JSON_LOGPROBS else parse_logprob_free
    return parse(choices[0], len(tokens))


def _check_echo(client: LLMClient, first: LLMRequest) -> None:
    """One request first: an endpoint that rejects echo, or shifts every echo (a BOS token), stops the run
    with the cause before it pays for the rest (re-asking would not help)."""
    result = client.call(first)
    if result.status == "rejected" and result.http_status in (400, 404, 405, 422):
        raise EchoUnsupportedError(
            f"simulator {ECHO_LOGPROBS!r} at {client.endpoint}",
            f"the endpoint rejects completions with echo and logprobs ({result.error})",
            f"use the simulator {JSON_LOGPROBS!r} (or a vLLM-style server that serves echo)")
    logprobs = ((result.response or {}).get("choices") or [{}])[0].get("logprobs") or {} if result.ok else {}
    shift = _echo_shift(first.params["prompt"], logprobs.get("tokens") or [], logprobs.get("text_offset") or []) \
        if logprobs.get("tokens") else None
    if shift:
        raise EchoUnsupportedError(
            f"simulator {ECHO_LOGPROBS!r} at {client.endpoint}", f"its echo is misaligned: {shift}",
            f"use the simulator {JSON_LOGPROBS!r}, or serve the model without a prepended BOS token in echo")


def simulate(pairs: Sequence[tuple[Explanation, NeuronRecords]], simulator: str = TOKEN_LOOKUP,
             client: LLMClient | None = None, splits: Sequence[str] = (SCORED_SPLIT, CALIBRATION_SPLIT),
             top_logprobs: int = 20) -> list[Simulation]:
    """One Simulation per (explanation, top or random record of `splits`), in input order."""
    if simulator not in SIMULATORS:
        raise NxInputError(f"simulator {simulator!r}", "is not known", f"choose one of {', '.join(SIMULATORS)}")
    jobs: list[tuple[Explanation, NeuronRecords, ActivationRecord]] = [
        (e, n, r) for e, n in pairs for s in splits for r in n.select(s) if r.kind in ("top", "random")]
    offline = simulator == TOKEN_LOOKUP
    if not offline:
        client = client or LLMClient()
    model = None if offline else client.settings.simulator_model
    requests = [simulation_request(simulator, e.explanation, r.tokens, model, top_logprobs)
                for e, _, r in jobs if e.explanation is not None] if not offline else []
    if requests and simulator == ECHO_LOGPROBS:
        _check_echo(client, requests[0])
    asked = [(e, r) for e, _, r in jobs if e.explanation is not None] if not offline else []
    results = iter(client.map_usable(
        requests, lambda i, res: _outcome(simulator, res, asked[i][1].tokens, asked[i][0].explanation))
        if requests else [])
    out = []
    for e, n, r in jobs:
        if e.explanation is None:
            values, failure = None, f"no explanation to simulate ({e.failure_reason})"
        elif offline:
            values, failure = token_lookup_values(e.explanation, r.tokens), None
        else:
            result, values, failure = next(results)
            if failure is not None and result.status != "unusable":
                failure = f"LLM call failed ({result.status}): {failure}"
        out.append(Simulation(
            explanation_id=e.explanation_id, model=n.model, layer=n.layer, neuron=n.neuron,
            gelu_variant=n.gelu_variant, explanation_gelu_variant=e.gelu_variant, simulator=simulator,
            simulator_model=model, sequence_id=r.sequence_id, kind=r.kind, split=r.split,
            expected_activations=values, true_activations=list(r.activations), failure_reason=failure))
    log.info("simulated %d sequences with %s: %d failures", len(out), simulator,
             sum(s.failure_reason is not None for s in out))
    return out
