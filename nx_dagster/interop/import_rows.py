"""Rows of the public tables from one neuron's published files (parsed with `openai_format.Reader`).

Imported rows are `pre_fix` lineage (the published activations used the pre-fix GELU). Tokens come inline
in the files, so each distinct excerpt becomes one `sequences` row with a synthetic id (a 63-bit hash of
its token strings: the same excerpt in many neurons' files is one row), `tokens` as given, `token_ids`
NULL. Records take the project's split rule by rank (top: train/calibration/valid/test round-robin;
random: calibration/valid/test). Explanations are explainer `openai-published`, scores and simulations
simulator `openai-published`; columns the format does not carry are NULL.
"""

from __future__ import annotations

import hashlib
import json

from nx_dagster.explain.records import Explanation
from nx_dagster.interop.openai_format import N_BOUNDARIES, TOKEN_SIDES, MalformedFile, Reader
from nx_dagster.vocab import N_QUANTILE_BINS, PRE_FIX, QUANTILE, RANDOM, RANDOM_SPLITS, SCORED_SPLIT, TOP, TOP_SPLITS

PUBLISHED = "openai-published"
VARIANT = PRE_FIX


def sequence_id(tokens: list[str]) -> int:
    return int.from_bytes(hashlib.blake2b(json.dumps(tokens).encode(), digest_size=8).digest(), "big") >> 1


class NeuronRows:
    """Collects the rows of one layer; `add_*` take one parsed file each."""

    def __init__(self, model: str, corpus: str, layer: int, n_neurons: int):
        self.model, self.corpus, self.layer, self.n_neurons = model, corpus, layer, n_neurons
        self.rows: dict[str, list[dict]] = {t: [] for t in (
            "sequences", "activation_records", "neuron_stats", "explanations", "simulations", "scores",
            "token_activation_summary", "neuron_connections", "token_connections")}
        self.seen: dict[int, None] = {}
        self.kinds: dict[tuple[int, int], list[tuple[str, str]]] = {}  # (neuron, sequence_id) → [(kind, split)]

    def _check_id(self, rd: Reader, obj: dict, neuron: int) -> None:
        layer, idx = rd.neuron_id(obj)
        if (layer, idx) != (self.layer, neuron):
            raise MalformedFile(rd.path, "neuron_id", f"is {layer}/{idx}, but the file is neuron {self.layer}/{neuron}")

    def _sequence(self, tokens: list[str], source: str) -> int:
        sid = sequence_id(tokens)
        if sid not in self.seen:
            self.seen[sid] = None
            self.rows["sequences"].append({"model": self.model, "corpus": self.corpus, "sequence_id": sid,
                                           "document": PUBLISHED, "start_token": 0, "tokens": tokens, "source": source})
        return sid

    def _base(self, neuron: int, source: str) -> dict:
        return {"model": self.model, "layer": self.layer, "neuron": neuron, "source": source}

    def add_record(self, rd: Reader, obj: dict, neuron: int, source: str) -> None:
        rd.cls(obj, "<file>", "NeuronRecord")
        self._check_id(rd, obj, neuron)
        base = {**self._base(neuron, source), "corpus": self.corpus, "gelu_variant": VARIANT}
        bins = rd.get(obj, "random_sample_by_quantile", "<file>", list)
        if len(bins) != N_QUANTILE_BINS or not all(isinstance(b, list) for b in bins):
            raise MalformedFile(rd.path, "random_sample_by_quantile", f"must be {N_QUANTILE_BINS} lists (has {len(bins)})")
        groups = [(TOP, None, rd.get(obj, "most_positive_activation_records", "<file>", list)),
                  (RANDOM, None, rd.get(obj, "random_sample", "<file>", list))]
        groups += [(QUANTILE, q, b) for q, b in enumerate(bins)]
        top_max = None
        for kind, q, recs in groups:
            for rank, rec in enumerate(recs):
                tokens, acts = rd.record(rec, f"{kind}[{rank}]")
                sid = self._sequence(tokens, source)
                vals = [a for a in acts if a is not None]
                splits = TOP_SPLITS if kind == TOP else RANDOM_SPLITS
                split = None if kind == QUANTILE else splits[rank % len(splits)]
                if kind != QUANTILE:
                    self.kinds.setdefault((neuron, sid), []).append((kind, split))
                mx = max(vals) if vals else None
                if kind == TOP and rank == 0:
                    top_max = mx
                self.rows["activation_records"].append({**base, "kind": kind, "quantile": q, "rank": rank, "split": split,
                                                        "sequence_id": sid, "max_activation": mx, "activations": acts})
        self.rows["neuron_stats"].append({
            **base, "n_tokens": None, "max_activation": top_max,
            "quantile_boundaries": rd.floats(obj, "quantile_boundaries", "<file>", N_BOUNDARIES),
            **{k: rd.get(obj, k, "<file>", float, nullable=True) for k in ("mean", "variance", "skewness", "kurtosis")}})

    def add_explanations(self, rd: Reader, obj: dict, neuron: int, source: str) -> None:
        rd.cls(obj, "<file>", "NeuronSimulationResults")
        self._check_id(rd, obj, neuron)
        for i, se in enumerate(rd.get(obj, "scored_explanations", "<file>", list)):
            where = f"scored_explanations[{i}]"
            rd.cls(se, where, "ScoredExplanation")
            text = rd.get(se, "explanation", where, str)
            e = Explanation(self.model, VARIANT, self.layer, neuron, PUBLISHED, None, PUBLISHED, i, text)
            self.rows["explanations"].append({**e.__dict__, "source": source})
            sim = rd.cls(rd.get(se, "scored_simulation", where, dict), f"{where}.scored_simulation", "ScoredSimulation")
            where = f"{where}.scored_simulation"
            common = {**self._base(neuron, source), "explanation_id": e.explanation_id, "gelu_variant": VARIANT,
                      "explanation_gelu_variant": VARIANT, "explainer": PUBLISHED, "simulator": PUBLISHED}
            n_tokens, avail, phase = 0, {}, TOP
            for j, sss in enumerate(rd.get(sim, "scored_sequence_simulations", where, list)):
                w = f"{where}.scored_sequence_simulations[{j}]"
                rd.cls(sss, w, "ScoredSequenceSimulation")
                s = rd.cls(rd.get(sss, "simulation", w, dict), f"{w}.simulation", "SequenceSimulation")
                if s.get("activation_scale") == "neuron_activations" and isinstance(s.get("uncalibrated_simulation"), dict):
                    s = rd.cls(s["uncalibrated_simulation"], f"{w}.simulation.uncalibrated_simulation", "SequenceSimulation")
                tokens = rd.strings(s, "tokens", f"{w}.simulation")
                expected = rd.floats(s, "expected_activations", f"{w}.simulation", len(tokens))
                true = rd.floats(sss, "true_activations", w, len(tokens))
                sid = self._sequence(tokens, source)
                kind, split = self._kind(avail.setdefault(sid, list(self.kinds.get((neuron, sid), []))), j, phase)
                phase = RANDOM if kind == RANDOM else phase
                n_tokens += len(tokens)
                self.rows["simulations"].append({**common, "simulator_model": None, "sequence_id": sid, "kind": kind,
                                                 "split": split, "expected_activations": expected,
                                                 "true_activations": true, "failure_reason": None})
            self.rows["scores"].append({
                **common, "n_tokens": n_tokens,
                "ev_correlation": rd.get(sim, "ev_correlation_score", where, float, nullable=True),
                "rsquared": rd.get(sim, "rsquared_score", where, float, nullable=True),
                "absolute_dev_explained": rd.get(sim, "absolute_dev_explained_score", where, float, nullable=True)})

    @staticmethod
    def _kind(cands: list, j: int, phase: str) -> tuple[str, str]:
        """Kind and split of the j-th scored sequence, taken (and removed) from `cands`, the neuron's records
        with its excerpt not yet matched in this explanation: valid-split records first, top records before
        random ones (the files list top first); the viewer's rule (first 5 top) where no record holds it."""
        kinds = (TOP, RANDOM) if phase == TOP else (RANDOM,)
        for valid_only in (True, False):
            for kind in kinds:
                for i, (k, split) in enumerate(cands):
                    if k == kind and (split == SCORED_SPLIT or not valid_only):
                        return cands.pop(i)
        return (TOP if j < 5 else RANDOM), SCORED_SPLIT

    def add_token_activations(self, rd: Reader, obj: dict, neuron: int, source: str) -> None:
        rd.cls(obj, "<file>", "TokenLookupTableSummaryOfNeuron")
        tokens = rd.strings(obj, "tokens", "<file>")
        acts = rd.floats(obj, "average_activations", "<file>", len(tokens))
        base = {**self._base(neuron, source), "corpus": self.corpus, "gelu_variant": VARIANT}
        self.rows["token_activation_summary"] += [{**base, "rank": r, "token": t, "mean_activation": a}
                                                  for r, (t, a) in enumerate(zip(tokens, acts))]

    def add_token_weights(self, rd: Reader, obj: dict, neuron: int, source: str) -> None:
        rd.cls(obj, "<file>", "WeightBasedSummaryOfNeuron")
        for key, direction, sign in TOKEN_SIDES:
            tw = rd.cls(rd.get(obj, key, "<file>", dict), key, "TokensAndWeights")
            tokens = rd.strings(tw, "tokens", key)
            weights = rd.floats(tw, "strengths", key, len(tokens))
            self.rows["token_connections"] += [{**self._base(neuron, source), "direction": direction, "sign": sign,
                                                "rank": r, "token": t, "weight": w}
                                               for r, (t, w) in enumerate(zip(tokens, weights))]

    def add_neurons(self, rd: Reader, obj: dict, neuron: int, source: str) -> None:
        rd.cls(obj, "<file>", None)
        for key, direction in (("c_fc", "upstream"), ("c_proj", "downstream")):
            side = rd.get(obj, key, "<file>", dict, nullable=True)
            if side is None:
                continue
            for sign in ("positive", "negative"):
                names = rd.strings(side, f"top_{sign}_neurons", key)
                weights = rd.floats(side, f"top_{sign}_weights", key, len(names))
                for rank, (name, w) in enumerate(zip(names, weights)):
                    try:
                        other_layer, other_neuron = (int(x) for x in name.split("_"))
                    except ValueError:
                        raise MalformedFile(rd.path, f"{key}.top_{sign}_neurons[{rank}]",
                                            f"must be '{{layer}}_{{neuron}}', got {name!r}") from None
                    self.rows["neuron_connections"].append({
                        **self._base(neuron, source), "direction": direction, "sign": sign, "rank": rank,
                        "other_layer": other_layer, "other_neuron": other_neuron, "weight": w})
