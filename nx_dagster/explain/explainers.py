"""Explainers: turn a neuron's train records into explanation text.

- `token_lookup` (offline, deterministic): names the tokens the neuron fires on most in its train top
  records — the up to 5 distinct tokens with the highest activation, keeping those at no less than half
  the maximum — as `fires on tokens: " Paris", " London"` (each token a JSON string).
- `token_activation_pairs` (LLM): shows the train top records as token<TAB>0–10 lines and parses the
  reply's `Explanation:` line; `n_candidates` > 1 asks for several choices (temperature 1).

A neuron that cannot be explained (no train records, no positive activation, a failed call, a refusal,
an unparseable or truncated reply) gets `explanation=None` and a `failure_reason`. A reply of which no
candidate parses is marked `unusable` in the ledger and re-asked first (`LLMClient.map_usable`).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Sequence

from nx_dagster.errors import NxInputError
from nx_dagster.explain.llm import LLMClient, LLMRequest, LLMResult
from nx_dagster.explain.prompts import EXPLAIN_PROMPT_VERSION, explain_messages
from nx_dagster.explain.records import Explanation, NeuronRecords
from nx_dagster.vocab import EXPLAIN_SPLIT, EXPLAINERS, TOKEN_ACTIVATION_PAIRS, TOKEN_LOOKUP, TOP

log = logging.getLogger(__name__)
TOKEN_LOOKUP_VERSION = "token-lookup-v1"
TOKEN_LOOKUP_PREFIX = "fires on tokens: "
_EXPLANATION_LINE = re.compile(r"^[\s*_#>-]*explanation[\s*_]*:\s*(.*?)\s*$", re.I | re.M)
_REFUSAL = re.compile(r"^\W*(i'?m sorry|sorry|i can(?:no|')t|i am unable|i'm unable|as an ai)\b", re.I)


def _explanation(n: NeuronRecords, explainer: str, model: str | None, version: str, candidate: int,
                 text: str | None, failure: str | None) -> Explanation:
    return Explanation(model=n.model, gelu_variant=n.gelu_variant, layer=n.layer, neuron=n.neuron,
                       explainer=explainer, explainer_model=model, prompt_version=version, candidate=candidate,
                       explanation=text, failure_reason=failure)


def token_lookup_explanation(neuron: NeuronRecords, max_tokens: int = 5) -> Explanation:
    """The offline explanation of one neuron (see module docstring)."""
    train = neuron.select(EXPLAIN_SPLIT, TOP)
    best: dict[str, float] = {}
    for rec in train:
        for tok, act in zip(rec.tokens, rec.activations):
            if act > best.get(tok, float("-inf")):
                best[tok] = act
    top = max(best.values(), default=0.0)
    if not train:
        failure = "no train records to explain from"
    elif not top > 0:
        failure = "no positive activation in the train records"
    else:
        failure = None
    if failure:
        return _explanation(neuron, TOKEN_LOOKUP, None, TOKEN_LOOKUP_VERSION, 0, None, failure)
    ranked = sorted((t for t, a in best.items() if a >= 0.5 * top), key=lambda t: (-best[t], t))[:max_tokens]
    text = TOKEN_LOOKUP_PREFIX + ", ".join(json.dumps(t, ensure_ascii=False) for t in ranked)
    return _explanation(neuron, TOKEN_LOOKUP, None, TOKEN_LOOKUP_VERSION, 0, text, None)


def explain_request(neuron: NeuronRecords, model: str, n_candidates: int = 1,
                    max_records: int | None = None) -> LLMRequest:
    """The chat request for one neuron. Raises ValueError when there is nothing positive to show."""
    train = neuron.select(EXPLAIN_SPLIT, TOP)[:max_records]
    messages = explain_messages([(r.tokens, r.activations) for r in train])
    params: dict = {"messages": messages, "max_tokens": 80, "temperature": 1.0 if n_candidates > 1 else 0.0}
    if n_candidates > 1:
        params["n"] = n_candidates
    return LLMRequest("chat", model, params)


def parse_explanation(choice: dict | None) -> tuple[str | None, str | None]:
    """(explanation, None) or (None, failure_reason) from one chat choice."""
    if not choice:
        return None, "the reply has no choice for this candidate"
    message = choice.get("message") or {}
    if message.get("refusal"):
        return None, f"refused: {message['refusal'][:200]}"
    finish = choice.get("finish_reason")
    if finish == "content_filter":
        return None, "refused: the endpoint's content filter stopped the reply"
    if finish == "length":
        return None, "truncated reply (finish_reason=length)"
    content = (message.get("content") or "").strip()
    if not content:
        return None, "empty reply"
    match = _EXPLANATION_LINE.search(content)
    if match is None:
        kind = "refused" if _REFUSAL.search(content) else "unparseable reply: no 'Explanation:' line"
        return None, f"{kind} ({content[:120]!r})"
    text = match.group(1).strip().strip("\"'`*").strip().rstrip(".").strip()
    if not text:
        return None, "unparseable reply: the 'Explanation:' line is empty"
    return text, None


def _candidates(result: LLMResult, n: int) -> list[tuple[str | None, str | None]]:
    choices = sorted((result.response or {}).get("choices") or [], key=lambda c: c.get("index", 0))
    return [parse_explanation(choices[i] if i < len(choices) else None) for i in range(n)]


def _usable(result: LLMResult, n: int) -> tuple[None, str | None]:
    """The map_usable check: a reply is unusable when none of its n candidates parses."""
    parsed = _candidates(result, n)
    return None, None if any(text is not None for text, _ in parsed) else parsed[0][1]


def _from_result(neuron: NeuronRecords, model: str, n: int, result: LLMResult, failure: str | None) -> list[Explanation]:
    if not result.ok:
        reason = failure if result.status == "unusable" else f"LLM call failed ({result.status}): {failure}"
        return [_explanation(neuron, TOKEN_ACTIVATION_PAIRS, model, EXPLAIN_PROMPT_VERSION, i, None, reason)
                for i in range(n)]
    return [_explanation(neuron, TOKEN_ACTIVATION_PAIRS, model, EXPLAIN_PROMPT_VERSION, i, text, why)
            for i, (text, why) in enumerate(_candidates(result, n))]


def explain_neurons(neurons: Sequence[NeuronRecords], explainer: str = TOKEN_LOOKUP,
                    client: LLMClient | None = None, n_candidates: int = 1,
                    max_records: int | None = None) -> list[Explanation]:
    """Explanations of every neuron (n_candidates each for the LLM explainer), in the input order."""
    if explainer == TOKEN_LOOKUP:
        return [token_lookup_explanation(n) for n in neurons]
    if explainer != TOKEN_ACTIVATION_PAIRS:
        raise NxInputError(f"explainer {explainer!r}", "is not known", f"choose one of {', '.join(EXPLAINERS)}")
    client = client or LLMClient()
    model = client.settings.explainer_model
    requests: list[LLMRequest] = []
    slots: list[int | str] = []  # index into requests, or an up-front failure
    for n in neurons:
        try:
            requests.append(explain_request(n, model, n_candidates, max_records))
            slots.append(len(requests) - 1)
        except ValueError as e:
            slots.append(str(e) if n.select(EXPLAIN_SPLIT, TOP) else "no train records to explain from")
    results = client.map_usable(requests, lambda i, res: _usable(res, n_candidates))
    out: list[Explanation] = []
    for n, slot in zip(neurons, slots):
        if isinstance(slot, str):
            out += [_explanation(n, TOKEN_ACTIVATION_PAIRS, model, EXPLAIN_PROMPT_VERSION, i, None, slot)
                    for i in range(n_candidates)]
        else:
            result, _, failure = results[slot]
            out += _from_result(n, model, n_candidates, result, failure)
    log.info("explained %d neurons with %s: %d failures", len(neurons), explainer,
             sum(e.explanation is None for e in out))
    return out
