"""The published OpenAI neuron-explainer file layout (docs: /work/shared/docs/OPENAI_FORMAT.md), object by
object: build the JSON object of one neuron from plain values, and read one back with strict checks.

Paths under a dataset root (`layer`, `neuron` are integers):
  collated-activations/{layer}/{neuron}.json                NeuronRecord
  explanations/{layer}/{neuron}.jsonl                       NeuronSimulationResults (one line)
  related-neurons/weight-based/{layer}/{neuron}.json        {"c_fc": ..., "c_proj": ...}
  related-tokens/activation-based/{layer}/{neuron}.json     TokenLookupTableSummaryOfNeuron
  related-tokens/weight-based/{layer}/{neuron}.json         WeightBasedSummaryOfNeuron

Every class object carries `dataclass_name` as its first key; NaN and infinities are written as null.
A malformed object raises `MalformedFile(path, field, problem)`, an NxInputError naming both.
"""

from __future__ import annotations

import json
import math
from typing import Any

from nx_dagster.errors import NxInputError
from nx_dagster.vocab import N_QUANTILE_BINS, QUANTILE_BOUNDARIES

KINDS = {
    "records": "collated-activations",
    "explanations": "explanations",
    "neurons": "related-neurons/weight-based",
    "token_activations": "related-tokens/activation-based",
    "token_weights": "related-tokens/weight-based",
}
N_BOUNDARIES = len(QUANTILE_BOUNDARIES)
TOKEN_SIDES = (("input_positive", "input", "positive"), ("input_negative", "input", "negative"),
               ("output_positive", "output", "positive"), ("output_negative", "output", "negative"))


def rel_path(kind: str, layer: int, neuron: int) -> str:
    ext = "jsonl" if kind == "explanations" else "json"
    return f"{KINDS[kind]}/{layer}/{neuron}.{ext}"


def dumps(obj: Any) -> bytes:
    """One compact line of strict JSON (NaN/inf → null; the walk that replaces them runs only when needed)."""
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except ValueError:
        text = json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.encode()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _obj(name: str, **fields: Any) -> dict:
    return {"dataclass_name": name, **fields}


def neuron_id(layer: int, neuron: int) -> dict:
    return _obj("NeuronId", layer_index=int(layer), neuron_index=int(neuron))


def activation_record(tokens: list[str], activations: list[float]) -> dict:
    return _obj("ActivationRecord", tokens=list(tokens), activations=list(activations))


def neuron_record(layer: int, neuron: int, top: list, random: list, by_quantile: list[list], boundaries: list[float],
                  mean, variance, skewness, kurtosis) -> dict:
    """`top`, `random` and each of the 5 `by_quantile` bins: lists of (tokens, activations), in rank order."""
    if len(by_quantile) != N_QUANTILE_BINS or len(boundaries or []) != N_BOUNDARIES:
        raise ValueError(f"neuron {layer}/{neuron}: need 5 quantile bins and 4 boundaries")
    rec = lambda pairs: [activation_record(t, a) for t, a in pairs]  # noqa: E731
    return _obj("NeuronRecord", neuron_id=neuron_id(layer, neuron), random_sample=rec(random),
                random_sample_by_quantile=[rec(b) for b in by_quantile],
                quantile_boundaries=[float(b) for b in boundaries], mean=mean, variance=variance,
                skewness=skewness, kurtosis=kurtosis, most_positive_activation_records=rec(top))


def sequence_simulation(tokens: list[str], expected: list[float]) -> dict:
    return _obj("SequenceSimulation", tokens=list(tokens), expected_activations=[float(x) for x in expected],
                activation_scale="simulated_normalized_activations", distribution_values=[[] for _ in tokens],
                distribution_probabilities=[[] for _ in tokens], uncalibrated_simulation=None)


def simulation_results(layer: int, neuron: int, explanations: list[dict]) -> dict:
    """`explanations`: dicts with `explanation`, `ev_correlation`, `rsquared`, `absolute_dev_explained` and
    `sequences` (dicts with `tokens`, `expected`, `true`, `ev_correlation`), top records first."""
    scored = []
    for e in explanations:
        seqs = [_obj("ScoredSequenceSimulation", simulation=sequence_simulation(s["tokens"], s["expected"]),
                     true_activations=[float(x) for x in s["true"]], ev_correlation_score=s.get("ev_correlation"),
                     rsquared_score=None, absolute_dev_explained_score=None) for s in e["sequences"]]
        sim = _obj("ScoredSimulation", scored_sequence_simulations=seqs, ev_correlation_score=e["ev_correlation"],
                   rsquared_score=e["rsquared"], absolute_dev_explained_score=e["absolute_dev_explained"])
        scored.append(_obj("ScoredExplanation", explanation=e["explanation"], scored_simulation=sim))
    return _obj("NeuronSimulationResults", neuron_id=neuron_id(layer, neuron), scored_explanations=scored)


def related_neurons(upstream: dict | None, downstream: dict | None) -> dict:
    """`upstream` / `downstream`: {"positive": [(layer, neuron, weight)...], "negative": [...]} or None."""
    def side(d):
        if d is None:
            return None
        out = {}
        for sign in ("positive", "negative"):
            out[f"top_{sign}_neurons"] = [f"{l}_{n}" for l, n, _ in d.get(sign, [])]
            out[f"top_{sign}_weights"] = [float(w) for _, _, w in d.get(sign, [])]
        return out
    return {"c_fc": side(upstream), "c_proj": side(downstream)}


def token_lookup_summary(pairs: list[tuple[str, float]]) -> dict:
    return _obj("TokenLookupTableSummaryOfNeuron", tokens=[t for t, _ in pairs],
                average_activations=[float(a) for _, a in pairs])


def weight_summary(sides: dict[tuple[str, str], list[tuple[str, float]]]) -> dict:
    """`sides`: (direction, sign) → [(token, weight)...] for input/output × positive/negative."""
    return _obj("WeightBasedSummaryOfNeuron", **{
        key: _obj("TokensAndWeights", tokens=[t for t, _ in sides.get((d, s), [])],
                  strengths=[float(w) for _, w in sides.get((d, s), [])]) for key, d, s in TOKEN_SIDES})


# -- reading ------------------------------------------------------------------------------------------------
class MalformedFile(NxInputError):
    def __init__(self, path: str, field: str, problem: str):
        super().__init__(f"import file {path}", f"field {field!r} {problem}",
                         "re-download or re-export this file (or delete it to import the rest without it)")


class Reader:
    """Strict field access on one parsed file; errors name the file and the dotted field."""

    def __init__(self, path: str):
        self.path = path

    def load(self, data: bytes, jsonl: bool = False) -> dict:
        text = data.decode("utf-8", errors="strict") if data else ""
        if jsonl:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if len(lines) != 1:
                raise MalformedFile(self.path, "<file>", f"must hold exactly one non-empty line (has {len(lines)})")
            text = lines[0]
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise MalformedFile(self.path, "<file>", f"is not valid JSON ({e}); truncated?") from None
        return self.cls(obj, "<file>", None)

    def cls(self, obj, where: str, name: str | None) -> dict:
        if not isinstance(obj, dict):
            raise MalformedFile(self.path, where, f"must be an object, got {type(obj).__name__}")
        if name is not None and obj.get("dataclass_name") != name:
            raise MalformedFile(self.path, where, f"must have dataclass_name {name!r}, got {obj.get('dataclass_name')!r}")
        return obj

    def get(self, obj: dict, key: str, where: str, kind: type | tuple, nullable: bool = False):
        if key not in obj:
            raise MalformedFile(self.path, f"{where}.{key}", "is missing")
        v = obj[key]
        if v is None and nullable:
            return None
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise MalformedFile(self.path, f"{where}.{key}", f"must be a number, got {v!r:.40}")
            return float(v)
        if not isinstance(v, kind) or isinstance(v, bool) and kind is int:
            raise MalformedFile(self.path, f"{where}.{key}", f"must be {getattr(kind, '__name__', kind)}, got {v!r:.40}")
        return v

    def floats(self, obj: dict, key: str, where: str, n: int | None = None) -> list:
        vals = self.get(obj, key, where, list)
        if n is not None and len(vals) != n:
            raise MalformedFile(self.path, f"{where}.{key}", f"must have {n} entries (has {len(vals)})")
        for i, v in enumerate(vals):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise MalformedFile(self.path, f"{where}.{key}[{i}]", f"must be a number or null, got {v!r:.40}")
        return [None if v is None else float(v) for v in vals]

    def strings(self, obj: dict, key: str, where: str) -> list[str]:
        vals = self.get(obj, key, where, list)
        if not all(isinstance(v, str) for v in vals):
            raise MalformedFile(self.path, f"{where}.{key}", "must be a list of strings")
        return vals

    def neuron_id(self, obj: dict, where: str = "<file>") -> tuple[int, int]:
        nid = self.cls(self.get(obj, "neuron_id", where, dict), f"{where}.neuron_id", None)
        lk, nk = ("layer_index", "neuron_index") if "layer_index" in nid else ("layer", "idx")  # legacy spelling
        return self.get(nid, lk, f"{where}.neuron_id", int), self.get(nid, nk, f"{where}.neuron_id", int)

    def record(self, obj, where: str) -> tuple[list[str], list[float]]:
        self.cls(obj, where, "ActivationRecord")
        tokens = self.strings(obj, "tokens", where)
        return tokens, self.floats(obj, "activations", where, len(tokens))
