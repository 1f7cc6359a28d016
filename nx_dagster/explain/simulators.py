"""Simulators: from an explanation, predict the neuron's activation (0–10 scale) on every token.

Each is a named choice; every one returns per-token expected values or a failure_reason:
- `json_logprobs` — a chat model answers {"activations": [...]} as structured output; the expected value
  at each number is Σ v·p(v) / Σ p(v) over the alternatives in `top_logprobs` that read 0..10.
- `echo_logprobs` — one completions request with echo and logprobs over a prompt whose target lines read
  `token<TAB>unknown`; the expected value comes from the distribution at each `unknown` (the original
  all-at-once method). Endpoints that reject echo (OpenAI) stop the run with a clear message.
- `logprob_free` — the same chat request without logprobs; the written numbers are the values.
- `token_lookup` — offline: reads only the explanation text, 10 for the tokens it names, else 0.
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
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 10 for v in values):
        return "structured output has values outside 0..10"
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
    for m in matches:
        k = bisect.bisect_right(starts, m.start()) - 1
        if k in used:
            return None, "one logprob token holds several values"
        used.add(k)
        split = starts[k] + len(content[k]["token"]) < m.end()
        value = _expected(content[k].get("top_logprobs") or [], m.group(), split)
        out.append(value if value is not None else float(m.group()))
    return out, None


def parse_logprob_free(choice: dict, n: int) -> Outcome:
    found = _json_numbers(choice, n)
    if isinstance(found, str):
        return None, found
    return [float(v) for v in json.loads(found[0])["activations"]], None


def parse_echo(response: dict, offsets: Sequence[int]) -> Outcome:
    logprobs = ((response.get("choices") or [{}])[0]).get("logprobs") or {}
    tops, text_offset = logprobs.get("top_logprobs"), logprobs.get("text_offset")
    if not tops or not text_offset:
        return None, "the completions reply has no echoed logprobs (the endpoint ignores echo; use json_logprobs)"
    index = {off: i for i, off in enumerate(text_offset)}
    out = []
    for off in offsets:
        i = index.get(off)
        if i is None or not tops[i]:
            return None, "no token starts at a value position (the tokenizer merged the tab and the placeholder)"
        value = _expected([{"token": t, "logprob": lp} for t, lp in tops[i].items()])
        if value is None:
            return None, f"no digit among the top logprobs at token {i}"
        out.append(value)
    return out, None


def _outcome(simulator: str, result: LLMResult, tokens: Sequence[str], explanation: str) -> Outcome:
    if not result.ok:
        return None, f"LLM call failed ({result.status}): {result.error}"
    if simulator == ECHO_LOGPROBS:
        return parse_echo(result.response or {}, echo_prompt(explanation, tokens)[1])
    choices = (result.response or {}).get("choices") or []
    if not choices:
        return None, "the reply has no choices"
    parse = parse_json_logprobs if simulator == JSON_LOGPROBS else parse_logprob_free
    return parse(choices[0], len(tokens))


def _check_echo(client: LLMClient, first: LLMRequest) -> None:
    result = client.call(first)
    if result.status == "rejected" and result.http_status in (400, 404, 405, 422):
        raise EchoUnsupportedError(
            f"simulator {ECHO_LOGPROBS!r} at {client.endpoint}",
            f"the endpoint rejects completions with echo and logprobs ({result.error})",
            f"use the simulator {JSON_LOGPROBS!r} (or a vLLM-style server that serves echo)")


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
    results = iter(client.map(requests) if requests else [])
    out = []
    for e, n, r in jobs:
        if e.explanation is None:
            values, failure = None, f"no explanation to simulate ({e.failure_reason})"
        elif offline:
            values, failure = token_lookup_values(e.explanation, r.tokens), None
        else:
            values, failure = _outcome(simulator, next(results), r.tokens, e.explanation)
        out.append(Simulation(
            explanation_id=e.explanation_id, model=n.model, layer=n.layer, neuron=n.neuron,
            gelu_variant=n.gelu_variant, explanation_gelu_variant=e.gelu_variant, simulator=simulator,
            simulator_model=model, sequence_id=r.sequence_id, kind=r.kind, split=r.split,
            expected_activations=values, true_activations=list(r.activations), failure_reason=failure))
    log.info("simulated %d sequences with %s: %d failures", len(out), simulator,
             sum(s.failure_reason is not None for s in out))
    return out
