"""Excerpts that a judge reads: drawn from a neuron's records, with the truth the judge is scored against.

A neuron's records are `activating` when their maximum activation reaches `ACTIVE_FRACTION` of the
neuron's strongest top record (the threshold `tau`). The explainer read the `train` top records, so no
scorer shows them again:
- detection: activating excerpts from the other top splits and every quantile bin (the whole range of
  activation, not only the top), and non-activating ones from random records below `tau`; shuffled.
- fuzzing: activating excerpts with highlighted tokens: either the tokens that reach `tau` (correct) or as
  many other tokens of the excerpt (shifted, wrong); the judge says whether the highlighting fits.
- intruder: trials of `k` top excerpts of the neuron (its activating tokens highlighted) plus one excerpt
  of another neuron of the same layer and lineage (its own activating tokens highlighted) at a random
  position; the judge names the odd one out.
Every draw comes from a generator seeded by `seed_of` (model, variant, layer, neuron, scorer, seed), so
the same records give the same excerpts on every run and machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nx_dagster.explain.records import ActivationRecord, NeuronRecords
from nx_dagster.vocab import EXPLAIN_SPLIT, QUANTILE, RANDOM, TOP

ACTIVE_FRACTION = 0.25  # a record activates when its maximum reaches this share of the neuron's top one
N_POSITIVE, N_NEGATIVE = 10, 10  # detection excerpts of each kind (fewer when the records have fewer)
N_FUZZING = 10  # fuzzing excerpts; half of them, rounded down, shifted
N_TRIALS, TRIAL_SIZE = 5, 4  # intruder trials, and the neuron's excerpts in each


@dataclass(frozen=True)
class Excerpt:
    sequence_id: int
    tokens: Sequence[str]
    activations: Sequence[float]
    truth: bool  # detection: drawn as activating; fuzzing: highlighted correctly
    highlight: tuple[int, ...] = ()  # positions shown highlighted (fuzzing and intruder)


@dataclass(frozen=True)
class Trial:
    excerpts: tuple[Excerpt, ...]
    intruder: int  # position of the other neuron's excerpt


def seed_of_text(text: str) -> int:
    """A 63-bit seed from a text (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def seed_of(records: NeuronRecords, scorer: str, seed: int = 0) -> int:
    """A seed from the neuron's identity, the scorer and a user seed."""
    return seed_of_text(f"{records.model}|{records.gelu_variant}|{records.layer}|{records.neuron}|{scorer}|{seed}")


def threshold(records: NeuronRecords) -> float | None:
    """`tau`: ACTIVE_FRACTION of the largest activation of the top records; None when no top record is
    above 0 (a neuron that never fires has no activating excerpt)."""
    top = [max(r.activations) for r in records.records if r.kind == TOP and r.activations]
    peak = max(top, default=0.0)
    return ACTIVE_FRACTION * peak if peak > 0 else None


def _excerpt(r: ActivationRecord, truth: bool, highlight: tuple[int, ...] = ()) -> Excerpt:
    return Excerpt(r.sequence_id, r.tokens, r.activations, truth, highlight)  # the record's lists, not copied


def _active_positions(r: ActivationRecord, tau: float) -> tuple[int, ...]:
    return tuple(i for i, a in enumerate(r.activations) if a >= tau)


def _pick(rng: np.random.Generator, items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), n, replace=False))]


def _activating(records: NeuronRecords, tau: float) -> list[ActivationRecord]:
    """Activating records the explainer did not read, one per sequence (top before quantile)."""
    seen, out = set(), []
    for r in sorted(records.records, key=lambda r: (r.kind != TOP, r.rank, r.sequence_id)):
        if r.kind in (TOP, QUANTILE) and r.split != EXPLAIN_SPLIT and r.activations and max(r.activations) >= tau \
                and r.sequence_id not in seen:
            seen.add(r.sequence_id)
            out.append(r)
    return out


def detection_excerpts(records: NeuronRecords, seed: int, n_positive: int = N_POSITIVE,
                       n_negative: int = N_NEGATIVE) -> list[Excerpt]:
    """Shuffled activating and non-activating excerpts; [] when the neuron has no threshold."""
    tau = threshold(records)
    if tau is None:
        return []
    rng = np.random.default_rng(seed)
    positives = _pick(rng, _activating(records, tau), n_positive)
    used = {r.sequence_id for r in positives}
    negatives = [r for r in records.records if r.kind == RANDOM and r.activations and max(r.activations) < tau
                 and r.sequence_id not in used]
    negatives = _pick(rng, list({r.sequence_id: r for r in negatives}.values()), n_negative)
    out = [_excerpt(r, True) for r in positives] + [_excerpt(r, False) for r in negatives]
    return [out[i] for i in rng.permutation(len(out))]


def fuzzing_excerpts(records: NeuronRecords, seed: int, n: int = N_FUZZING) -> list[Excerpt]:
    """Activating excerpts, about half with their highlighting shifted onto other tokens; shuffled."""
    tau = threshold(records)
    if tau is None:
        return []
    rng = np.random.default_rng(seed)
    chosen = [r for r in _pick(rng, _activating(records, tau), n)
              if len(_active_positions(r, tau)) < len(r.tokens)]  # an all-active excerpt cannot be shifted
    wrong = set(rng.choice(len(chosen), len(chosen) // 2, replace=False).tolist()) if chosen else set()
    out = []
    for i, r in enumerate(chosen):
        active = _active_positions(r, tau)
        if i in wrong:
            others = [p for p in range(len(r.tokens)) if p not in active]
            shifted = tuple(sorted(rng.choice(others, min(len(active), len(others)), replace=False).tolist()))
            out.append(_excerpt(r, False, shifted))
        else:
            out.append(_excerpt(r, True, active))
    return [out[i] for i in rng.permutation(len(out))]


@dataclass(frozen=True)
class Activating:
    """A neuron's threshold and its activating records, computed once for every trial that uses them."""

    records: NeuronRecords
    tau: float
    excerpts: tuple[ActivationRecord, ...]


def activating(neurons: list[NeuronRecords]) -> list[Activating]:
    """The neurons that fire (a threshold and at least one activating record)."""
    out = []
    for n in neurons:
        tau = threshold(n)
        if tau is not None:
            found = _activating(n, tau)
            if found:
                out.append(Activating(n, tau, tuple(found)))
    return out


def intruder_trials(own: Activating, pool: list[Activating], seed: int, n_trials: int = N_TRIALS,
                    k: int = TRIAL_SIZE) -> list[Trial]:
    """Trials of `k` of the neuron's activating excerpts and one activating excerpt of another neuron of
    `pool`; fewer trials when the records run out, [] without another neuron."""
    rng = np.random.default_rng(seed)
    candidates = [o for o in pool if o.records.key != own.records.key]
    if not candidates:
        return []
    order = [own.excerpts[i] for i in rng.permutation(len(own.excerpts))]
    mine = {r.sequence_id for r in own.excerpts}
    trials = []
    for t in range(min(n_trials, len(order) // k)):
        other = candidates[int(rng.integers(len(candidates)))]
        choices = [r for r in other.excerpts if r.sequence_id not in mine]
        if not choices:
            continue
        odd = choices[int(rng.integers(len(choices)))]
        excerpts = [_excerpt(r, True, _active_positions(r, own.tau)) for r in order[t * k:(t + 1) * k]]
        at = int(rng.integers(k + 1))
        excerpts.insert(at, _excerpt(odd, False, _active_positions(odd, other.tau)))
        trials.append(Trial(tuple(excerpts), at))
    return trials
