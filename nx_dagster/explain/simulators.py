"""Simulators: from an explanation, predict the neuron's activation (0–10 scale) on every token.

Each is a named choice; every one returns per-token expected values or a failure_reason:
- `json_logprobs` — a chat model answers {"activations": [...]} as structured output; the expected value
  at each number is Σ v·p(v) / Σ p(v) over the alternatives in `top_logprobs` that read 0..10. A number
  with no 0..10 alternative among its top_logprobs fails the sequence (never the written number instead).
- `echo_logprobs` — one completions request with echo and logprobs over a prompt whose target lines read
  `token<TAB>unknown`; the expected value comes from the distribution at each `unknown` (the original
  all-at-once method). Endpoints that reject echo (OpenAI) stop the run with a clear message.
- `logprob_free` — the same chat request without logprobs; the written numbers are the values.
- `token_lookup` — offline: reads only the explanation text, 10 for the tokens it names (quoted tokens
  exactly, leading space and case included; else its words case-blind), else 0.

A reply that cannot be used (the failure reasons of `replies.py`) is marked `unusable` in the ledger and the
sequence is re-asked (`LLMClient.map_usable`, `reasks` more times per run) before it fails.
"""

from __future__ import annotations

import logging
from typing import Sequence

from nx_dagster.errors import NxInputError
from nx_dagster.explain.llm import LLMClient, LLMRequest, LLMResult
from nx_dagster.explain.naming import token_matcher
from nx_dagster.explain.prompts import (
    ACTIVATIONS_SCHEMA, SIMULATE_ECHO_PROMPT_VERSION, SIMULATE_JSON_PROMPT_VERSION, echo_prompt, simulate_messages,
)
from nx_dagster.explain.records import ActivationRecord, Explanation, NeuronRecords, Simulation
from nx_dagster.explain.replies import (  # noqa: F401  (parse_* are this module's public parsers too)
    Outcome, echo_shift, parse_echo, parse_json_logprobs, parse_logprob_free,
)
from nx_dagster.vocab import (
    CALIBRATION_SPLIT, ECHO_LOGPROBS, JSON_LOGPROBS, LOGPROB_FREE, SCORED_SPLIT, SIMULATED_KINDS, SIMULATORS,
    TOKEN_LOOKUP,
)

log = logging.getLogger(__name__)
SIMULATOR_VERSIONS = {TOKEN_LOOKUP: "token-lookup-v2", JSON_LOGPROBS: SIMULATE_JSON_PROMPT_VERSION,
                      LOGPROB_FREE: SIMULATE_JSON_PROMPT_VERSION, ECHO_LOGPROBS: SIMULATE_ECHO_PROMPT_VERSION}
class EchoUnsupportedError(NxInputError):
    """The endpoint refuses completions with echo + logprobs."""


def token_lookup_values(explanation: str, tokens: Sequence[str]) -> list[float]:
    """10 for the tokens the explanation names (`naming.token_matcher`: quoted tokens exactly, else words
    case-blind), 0 elsewhere. `columnar.py` computes the same for many sequences at once."""
    named = token_matcher(explanation)
    return [10.0 if named(t) else 0.0 for t in tokens]


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
    shift = echo_shift(first.params["prompt"], logprobs.get("tokens") or [], logprobs.get("text_offset") or []) \
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
        (e, n, r) for e, n in pairs for s in splits for r in n.select(s) if r.kind in SIMULATED_KINDS]
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
