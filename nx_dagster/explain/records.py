"""Plain data the explain stage works on: activation records in, explanations and simulations out.

One `NeuronRecords` holds every record of one neuron of one GELU variant: top records (split round-robin
train/calibration/valid/test by rank) and random records (calibration/valid/test). Explanations are written
from `train`; simulations cover `valid` (scored) and `calibration` (for the optional linear calibration).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import pyarrow as pa

from nx_dagster.errors import NxInputError
from nx_dagster.vocab import TOP


@dataclass(frozen=True)
class ActivationRecord:
    """One excerpt: its tokens and the neuron's raw post-GELU activation on each."""

    sequence_id: int
    tokens: list[str]
    activations: list[float]
    kind: str  # 'top' | 'random' | 'quantile'
    split: str | None
    rank: int = 0

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.activations):
            raise NxInputError(
                f"activation record of sequence {self.sequence_id}",
                f"has {len(self.tokens)} tokens but {len(self.activations)} activations",
                "rebuild the activations stage so records and sequences come from the same corpus",
            )


@dataclass(frozen=True)
class NeuronRecords:
    """All records of one neuron, recorded with one GELU variant."""

    model: str
    gelu_variant: str
    layer: int
    neuron: int
    records: list[ActivationRecord]

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.model, self.layer, self.neuron)

    def select(self, split: str, kind: str | None = None) -> list[ActivationRecord]:
        """Records of one split (and kind), strongest first."""
        out = [r for r in self.records if r.split == split and (kind is None or r.kind == kind)]
        return sorted(out, key=lambda r: (r.kind != TOP, r.rank, r.sequence_id))


@dataclass(frozen=True)
class Explanation:
    """One explanation of one neuron; `explanation` is None exactly when `failure_reason` is set."""

    model: str
    gelu_variant: str  # the variant of the activations it was written from
    layer: int
    neuron: int
    explainer: str
    explainer_model: str | None
    prompt_version: str
    candidate: int
    explanation: str | None
    failure_reason: str | None = None
    explanation_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.explanation_id:
            ident = [self.model, self.gelu_variant, self.layer, self.neuron, self.explainer, self.explainer_model,
                     self.prompt_version, self.candidate, self.explanation]
            digest = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:20]
            object.__setattr__(self, "explanation_id", f"x{digest}")


@dataclass(frozen=True)
class Simulation:
    """Simulated expected activations (0–10 scale) of one scored sequence, or why there are none."""

    explanation_id: str
    model: str
    layer: int
    neuron: int
    gelu_variant: str  # the variant scored on
    explanation_gelu_variant: str
    simulator: str
    simulator_model: str | None
    sequence_id: int
    kind: str
    split: str
    expected_activations: list[float] | None
    true_activations: list[float]
    failure_reason: str | None = None


def neuron_records_from_arrow(
    records: pa.Table, tokens_by_sequence: Mapping[int, Sequence[str]] | pa.Table | None = None,
) -> list[NeuronRecords]:
    """Group rows of `activation_records` into one NeuronRecords per (model, variant, layer, neuron).

    Tokens come from a `tokens` column of `records` (a join with `sequences`), or from
    `tokens_by_sequence`: a mapping sequence_id -> tokens, or a table with `sequence_id` and `tokens`.
    """
    if isinstance(tokens_by_sequence, pa.Table):
        tokens_by_sequence = dict(zip(tokens_by_sequence.column("sequence_id").to_pylist(),
                                      tokens_by_sequence.column("tokens").to_pylist()))

    def col(name: str) -> list:  # column by column: no dict per row
        return records.column(name).to_pylist() if name in records.column_names else [None] * records.num_rows

    acts = records.column("activations")
    if not (pa.types.is_list(acts.type) and pa.types.is_floating(acts.type.value_type)):
        acts = pa.array([[float(a) for a in row] for row in acts.to_pylist()], pa.list_(pa.float64()))
    grouped: dict[tuple, list[ActivationRecord]] = defaultdict(list)
    for model, variant, layer, neuron, kind, split, rank, sid, values, tokens in zip(
            col("model"), col("gelu_variant"), col("layer"), col("neuron"), col("kind"), col("split"), col("rank"),
            col("sequence_id"), acts.to_pylist(), col("tokens")):
        if tokens is None:
            if tokens_by_sequence is None or sid not in tokens_by_sequence:
                raise NxInputError(f"sequence {sid}", "has activation records but no tokens",
                                   "rebuild the sequences and activations stages from the same corpus")
            tokens = tokens_by_sequence[sid]  # shared by every record of the sequence (never changed)
        grouped[(model, variant, int(layer), int(neuron))].append(ActivationRecord(
            sequence_id=int(sid), tokens=tokens, activations=values, kind=kind, split=split, rank=int(rank or 0)))
    return [NeuronRecords(*k, records=v) for k, v in sorted(grouped.items())]


def pair_by_neuron(
    explanations: Iterable[Explanation], neurons: Iterable[NeuronRecords],
) -> list[tuple[Explanation, NeuronRecords]]:
    """Match each explanation with the records of the same (model, layer, neuron), of whatever variant
    `neurons` holds: pass pre-fix explanations with post-fix records to score across lineages."""
    by_key = {n.key: n for n in neurons}
    return [(e, by_key[(e.model, e.layer, e.neuron)]) for e in explanations
            if (e.model, e.layer, e.neuron) in by_key]
