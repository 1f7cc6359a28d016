"""Judges: who answers a detection, fuzzing or intruder question, offline or through an LLM.

Offline judges (`token_lookup`, no key, no network) read an explanation the way the offline simulator
does (`naming.token_matcher`: quoted tokens exactly, else words case-blind):
- detection: an excerpt fires when one of its tokens is named; probability 1 or 0;
- fuzzing: the highlighting fits when a highlighted token is named (the explanation names a few tokens;
  the truly activating ones are marked with the others that reach the threshold);
- intruder: the excerpt whose highlighted tokens are least alike the other excerpts' (`least_alike`:
  Jaccard similarity of the highlighted strings; the first of equals).
LLM judges ask a chat model for JSON (`{"answers": [0|1, ...]}` or `{"intruder": i}`); with `top_logprobs`
the probability of each answer is p(1) / (p(0) + p(1)) over the alternatives at its digit, which gives
AUROC; without them the written digit is the answer and AUROC stays NULL. Each `parse_*` returns
(value, None) or (None, the reason the reply is unusable), like the simulators' parsers.
Changing any wording here changes what the judge is asked: bump JUDGE_PROMPT_VERSION.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from typing import Sequence

from nx_dagster.explain.excerpts import Excerpt, Trial
from nx_dagster.explain.naming import token_matcher
from nx_dagster.explain.prompts import one_line, show_token
from nx_dagster.vocab import DETECTION, FUZZING, INTRUDER  # noqa: F401  (the scorers' names, used as judges.X)

JUDGE_PROMPT_VERSION = "judge-v1"
_BINARY = re.compile(r"[\s,\[\]:]*([01])[\s,\]]*")

_DETECTION_SYSTEM = (
    "You check a description of one neuron inside a language model against text excerpts. For each "
    "numbered excerpt, decide whether the neuron, as described, would respond strongly to some token in it. "
    "Judge by the description alone.")
_FUZZING_SYSTEM = (
    "You check a description of one neuron inside a language model. In each numbered excerpt some tokens "
    "are marked <<like this>>. Decide for each excerpt whether the marked tokens are the ones the neuron, as "
    "described, would respond to.")
_INTRUDER_SYSTEM = (
    "You study one neuron inside a language model. Several excerpts are shown, with the tokens where a "
    "neuron responds marked <<like this>>. All but one excerpt come from the same neuron; one comes from a "
    "different neuron. Find the one that does not belong.")


def _answers_schema(name: str, key: str, kind: str) -> dict:
    items = {"type": "array", "items": {"type": "integer"}} if kind == "array" else {"type": "integer"}
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": {
        "type": "object", "properties": {key: items}, "required": [key], "additionalProperties": False}}}


ANSWERS_SCHEMA = _answers_schema("judge_answers", "answers", "array")
INTRUDER_SCHEMA = _answers_schema("intruder_answer", "intruder", "integer")


# -- offline ---------------------------------------------------------------------------------------
def offline_detection(explanation: str, excerpts: Sequence[Excerpt]) -> list[float]:
    named = token_matcher(explanation)
    return [1.0 if named.any_of(e.tokens) else 0.0 for e in excerpts]


def offline_fuzzing(explanation: str, excerpts: Sequence[Excerpt]) -> list[float]:
    named = token_matcher(explanation)
    return [1.0 if named.any_of(e.tokens[i] for i in e.highlight) else 0.0 for e in excerpts]


def offline_intruder(trial: Trial) -> int:
    return least_alike([{e.tokens[i] for i in e.highlight} for e in trial.excerpts])


def least_alike(marked: list[set[str]]) -> int:
    """The position of the set least like the others: the smallest sum of Jaccard similarities (|A ∩ B| /
    |A ∪ B|) to the other sets; the first of equals."""
    def jaccard(a: set[str], b: set[str]) -> float:
        return len(a & b) / len(a | b) if a or b else 0.0

    alike = [sum(jaccard(m, o) for j, o in enumerate(marked) if j != i) for i, m in enumerate(marked)]
    return alike.index(min(alike))


# -- prompts ---------------------------------------------------------------------------------------
def _shown(e: Excerpt, marked: bool) -> str:
    marks = set(e.highlight) if marked else set()
    return "".join(f"<<{show_token(t)}>>" if i in marks else show_token(t) for i, t in enumerate(e.tokens))


def _numbered(excerpts: Sequence[Excerpt], marked: bool) -> str:
    return "\n".join(f"Excerpt {i}: {_shown(e, marked)}" for i, e in enumerate(excerpts, start=1))


def judge_messages(scorer: str, explanation: str, excerpts: Sequence[Excerpt]) -> list[dict[str, str]]:
    """Chat messages for a detection or fuzzing question over `excerpts`."""
    system = _DETECTION_SYSTEM if scorer == DETECTION else _FUZZING_SYSTEM
    question = "would the neuron respond to it" if scorer == DETECTION else "do the marked tokens fit"
    user = (f"Neuron description: {one_line(explanation)}\n\n{_numbered(excerpts, scorer == FUZZING)}\n\n"
            f'For each excerpt, {question}? Answer with a JSON object {{"answers": [...]}} holding exactly '
            f"{len(excerpts)} numbers in excerpt order: 1 for yes, 0 for no.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def intruder_messages(trial: Trial) -> list[dict[str, str]]:
    user = (f"{_numbered(trial.excerpts, True)}\n\nWhich excerpt comes from a different neuron? Answer with a "
            f'JSON object {{"intruder": n}}, n the excerpt number from 1 to {len(trial.excerpts)}.')
    return [{"role": "system", "content": _INTRUDER_SYSTEM}, {"role": "user", "content": user}]


def judge_params(messages: list[dict[str, str]], schema: dict, n_answers: int, top_logprobs: int | None) -> dict:
    params: dict = {"messages": messages, "max_tokens": 4 * n_answers + 32, "temperature": 0.0,
                    "response_format": schema}
    if top_logprobs:
        params.update(logprobs=True, top_logprobs=top_logprobs)
    return params


# -- replies ---------------------------------------------------------------------------------------
def _content(choice: dict) -> str | tuple[str, dict]:
    message = choice.get("message") or {}
    if message.get("refusal"):
        return f"refused: {message['refusal'][:200]}"
    if choice.get("finish_reason") == "length":
        return "truncated structured output (finish_reason=length)"
    text = message.get("content") or ""
    try:
        return text, json.loads(text)
    except json.JSONDecodeError:
        return f"malformed structured output ({text[:80]!r})"


def _probability(alternatives: list[dict]) -> float | None:
    p = {"0": 0.0, "1": 0.0}
    for alt in alternatives:
        m = _BINARY.fullmatch(alt.get("token", ""))
        if m:
            p[m.group(1)] += math.exp(alt["logprob"])
    total = p["0"] + p["1"]
    return p["1"] / total if total > 0 else None


def parse_answers(choice: dict, n: int, with_logprobs: bool) -> tuple[list[float] | None, str | None]:
    """Per excerpt the probability of "yes" (the written 0 or 1 without logprobs)."""
    found = _content(choice)
    if isinstance(found, str):
        return None, found
    text, reply = found
    answers = reply.get("answers") if isinstance(reply, dict) else None
    if not isinstance(answers, list) or len(answers) != n:
        count = len(answers) if isinstance(answers, list) else "no"
        return None, f"structured output has {count} answers for {n} excerpts"
    bad = [a for a in answers if isinstance(a, bool) or a not in (0, 1)]
    if bad:
        return None, f"structured output has answers other than 0 and 1 ({bad[0]!r})"
    if not with_logprobs:
        return [float(a) for a in answers], None
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if "".join(c.get("token", "") for c in content) != text:
        return None, "the logprob tokens do not spell the reply (this endpoint does not serve them)"
    starts = [0]
    for c in content[:-1]:
        starts.append(starts[-1] + len(c["token"]))
    first = text.index("[", text.index('"answers"'))
    out = []
    for i, m in enumerate(re.finditer(r"[01]", text[first:])):
        if i == n:
            break
        k = bisect.bisect_right(starts, first + m.start()) - 1
        p = _probability(content[k].get("top_logprobs") or [])
        if p is None:
            return None, f"no 0 or 1 among the top_logprobs of answer {i}: no probability"
        out.append(p)
    return out, None


def parse_intruder(choice: dict, n: int) -> tuple[int | None, str | None]:
    """The 0-based position the judge names."""
    found = _content(choice)
    if isinstance(found, str):
        return None, found
    value = found[1].get("intruder") if isinstance(found[1], dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= n:
        return None, f"structured output names no excerpt from 1 to {n} ({value!r})"
    return value - 1, None
