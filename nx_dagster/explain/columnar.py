"""The offline `token_lookup` explainer and simulator over Arrow columns, for a whole stage at once.

They give exactly what `explainers.token_lookup_explanation` and `simulators.simulate(..., "token_lookup")`
give for the `NeuronRecords` of `neuron_records_from_arrow` (tests hold them together), without building a
Python object per record or token: records stay flat numpy arrays (one activation, as stored, and one
token id per token), and every per-token step is an array operation. Only the distinct token strings (a few
thousand) and the explanations (one per neuron) are Python objects.

Shapes: R records (rows of `activation_records`), T tokens over all of them, V distinct token strings,
N neurons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nx_dagster.errors import NxInputError
from nx_dagster.explain.explainers import TOKEN_LOOKUP_PREFIX, TOKEN_LOOKUP_VERSION
from nx_dagster.explain.records import Explanation
from nx_dagster.explain.naming import token_matcher
from nx_dagster.storage.schema import TABLES
from nx_dagster.vocab import CALIBRATION_SPLIT, EXPLAIN_SPLIT, SCORED_SPLIT, SIMULATED_KINDS, TOKEN_LOOKUP, TOP

_SPLIT_ORDER = (SCORED_SPLIT, CALIBRATION_SPLIT)  # the order `simulate` visits a neuron's records in


def _ranks(values: list) -> tuple[np.ndarray, list]:
    """Per value, the position of its distinct value in Python's sorted order; and those sorted values."""
    distinct = sorted(set(values))
    at = {v: i for i, v in enumerate(distinct)}
    return np.fromiter((at[v] for v in values), np.int64, len(values)), distinct


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """`_ranks` of a string column without NULLs, through Arrow's dictionary encoding."""
    enc = pc.dictionary_encode(column.combine_chunks())
    at, distinct = _ranks(enc.dictionary.to_pylist())
    return at[enc.indices.to_numpy(zero_copy_only=False)], distinct


def _is(column: pa.ChunkedArray, *values: str) -> np.ndarray:
    """(R,) bool: the column holds one of `values` (never NULL)."""
    return pc.is_in(column, pa.array(values, pa.string())).fill_null(False).to_numpy(zero_copy_only=False)


def _gather(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices start[i], start[i]+1, ..., start[i]+lengths[i]-1 of every i, laid end to end."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(total)


@dataclass(frozen=True)
class RecordColumns:
    """Records of `activation_records` (with a `tokens` column), sorted like `NeuronRecords.select` reads
    them: by neuron (model, gelu_variant, layer, neuron), then split (valid, calibration, others), then
    top before the other kinds, rank (NULL = 0) and sequence_id."""

    table: pa.Table  # R rows, in the order above, without `tokens` and `activations`
    neuron: np.ndarray  # (R,) index into `neurons`
    neurons: list[tuple[str, str, int, int]]  # (N,) sorted (model, gelu_variant, layer, neuron)
    starts: np.ndarray  # (R,) first token of each record in `acts` / `token_ids`
    lengths: np.ndarray  # (R,) tokens per record
    acts: np.ndarray  # (T,) the stored activations, as stored (FLOAT: float32)
    token_ids: np.ndarray  # (T,) index into `vocab`
    vocab: list[str]  # (V,) distinct token strings

    @classmethod
    def from_arrow(cls, records: pa.Table) -> "RecordColumns":
        """Raises NxInputError when a record's activations and tokens differ in length."""
        model, models = _codes(records.column("model"))
        variant, variants = _codes(records.column("gelu_variant"))
        layer = records.column("layer").to_numpy(zero_copy_only=False).astype(np.int64)
        neuron = records.column("neuron").to_numpy(zero_copy_only=False).astype(np.int64)
        split = np.where(_is(records.column("split"), SCORED_SPLIT), 0,
                         np.where(_is(records.column("split"), CALIBRATION_SPLIT), 1, 2))
        not_top = ~_is(records.column("kind"), TOP)
        rank = records.column("rank").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        seq = records.column("sequence_id").to_numpy(zero_copy_only=False).astype(np.int64)
        order = np.lexsort((seq, rank, not_top, split, neuron, layer, variant, model))
        key = np.stack([model, variant, layer, neuron], axis=1)[order]
        new = np.ones(len(key), bool)
        new[1:] = (key[1:] != key[:-1]).any(axis=1)
        neurons = [(models[m], variants[v], int(la), int(n)) for m, v, la, n in key[new]]

        # flat arrays stay in the input's row order; `starts` points into them from the sorted rows
        acts_col, toks_col = records.column("activations").combine_chunks(), records.column("tokens").combine_chunks()
        lengths = pc.list_value_length(acts_col).fill_null(0).to_numpy().astype(np.int64)
        n_tokens = pc.list_value_length(toks_col).fill_null(0).to_numpy().astype(np.int64)
        if (lengths != n_tokens).any():
            i = int(np.flatnonzero(lengths != n_tokens)[0])
            raise NxInputError(f"activation record of sequence {records.column('sequence_id')[i].as_py()}",
                               f"has {n_tokens[i]} tokens but {lengths[i]} activations",
                               "rebuild the activations stage so records and sequences come from the same corpus")
        tokens = pc.dictionary_encode(toks_col.flatten())
        return cls(table=records.select([c for c in records.column_names if c not in ("tokens", "activations")])
                   .take(pa.array(order)), neuron=np.cumsum(new) - 1, neurons=neurons,
                   starts=np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)[order],
                   lengths=lengths[order], acts=acts_col.flatten().to_numpy(zero_copy_only=False),
                   token_ids=tokens.indices.to_numpy(zero_copy_only=False),
                   vocab=tokens.dictionary.to_pylist())

    @cached_property
    def neuron_index(self) -> dict[tuple[str, int, int], int]:
        """(model, layer, neuron) -> index into `neurons`; the last variant wins, as in `pair_by_neuron`."""
        return {(m, layer, n): i for i, (m, _, layer, n) in enumerate(self.neurons)}

    def has_neuron(self, model: str, layer: int, neuron: int) -> bool:
        return (model, layer, neuron) in self.neuron_index

    @cached_property
    def simulated_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows `simulate` visits (top and random records of the valid and calibration splits), in
        row order, so valid before calibration, then top, rank, sequence_id; and (N + 1,) each neuron's
        first one among them."""
        rows = np.flatnonzero(_is(self.table.column("split"), *_SPLIT_ORDER)
                              & _is(self.table.column("kind"), *SIMULATED_KINDS))
        return rows, np.searchsorted(self.neuron[rows], np.arange(len(self.neurons) + 1))

    @cached_property
    def word_ids(self) -> dict[str, list[int]]:
        """Stripped lower-case token -> the vocab ids a named word matches (never blank ones)."""
        out: dict[str, list[int]] = {}
        for v, t in enumerate(self.vocab):
            if t.strip():
                out.setdefault(t.strip().lower(), []).append(v)
        return out

    @cached_property
    def exact_ids(self) -> dict[str, list[int]]:
        """Token string -> the vocab ids that read as it (a quoted token matches exactly)."""
        out: dict[str, list[int]] = {}
        for v, t in enumerate(self.vocab):
            out.setdefault(t, []).append(v)
        return out

    def named_ids(self, explanation: str) -> list[int]:
        """The vocab ids `naming.token_matcher(explanation)` accepts."""
        named = token_matcher(explanation)
        ids = self.exact_ids if named.quoted else self.word_ids
        return [v for name in (named.quoted or named.words) for v in ids.get(name, ())]

    @cached_property
    def vocab_rank(self) -> np.ndarray:
        """(V,) each token's place in Python's sorted order of `vocab`."""
        return _ranks(self.vocab)[0]

    @cached_property
    def train_top_rows(self) -> np.ndarray:
        """The rows the explainer reads: top records of the train split."""
        return np.flatnonzero(_is(self.table.column("split"), EXPLAIN_SPLIT) & _is(self.table.column("kind"), TOP))

    def neuron_rows(self) -> np.ndarray:
        """(N + 1,) the first row of each neuron, and R."""
        return np.searchsorted(self.neuron, np.arange(len(self.neurons) + 1))


def token_lookup_explanations(cols: RecordColumns, neurons: range | None = None,
                              max_tokens: int = 5) -> list[Explanation]:
    """`token_lookup_explanation` of each neuron of `cols` (indices `neurons`, default all), in order."""
    neurons = range(len(cols.neurons)) if neurons is None else neurons
    bounds = cols.neuron_rows()
    train = cols.train_top_rows
    train = train[(train >= bounds[neurons.start]) & (train < bounds[neurons.stop])]
    has_train = np.zeros(len(cols.neurons), bool)
    has_train[cols.neuron[train]] = True
    at = _gather(cols.starts[train], cols.lengths[train])
    g = np.repeat(cols.neuron[train], cols.lengths[train])
    tok, act = cols.token_ids[at], cols.acts[at].astype(np.float64)  # as Python floats compare
    keep = act > -np.inf  # what `act > best.get(tok, -inf)` lets in: never NaN or -inf
    g, tok, act = g[keep], tok[keep], act[keep]
    # best activation per (neuron, token)
    key = g * len(cols.vocab) + tok
    order = np.argsort(key, kind="stable")
    key, act = key[order], act[order]
    first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1]))) if len(key) else np.zeros(0, np.int64)
    best = np.maximum.reduceat(act, first) if len(key) else np.zeros(0)
    g, tok = key[first] // len(cols.vocab), key[first] % len(cols.vocab)
    top = np.full(len(cols.neurons), -np.inf)
    np.maximum.at(top, g, best)
    top[top == -np.inf] = 0.0  # max(best.values(), default=0.0)
    # up to max_tokens per neuron, at least half its top, strongest first, then by token string
    chosen = best >= 0.5 * top[g]
    g, tok, best = g[chosen], tok[chosen], best[chosen]
    order = np.lexsort((cols.vocab_rank[tok], -best, g))
    g, tok = g[order], tok[order]
    place = np.arange(len(g)) - np.searchsorted(g, g)
    named: dict[int, list[int]] = {}
    for n, t in zip(g[place < max_tokens].tolist(), tok[place < max_tokens].tolist()):
        named.setdefault(n, []).append(t)
    out = []
    for n in neurons:
        model, variant, layer, neuron = cols.neurons[n]
        failure = ("no train records to explain from" if not has_train[n] else
                   "no positive activation in the train records" if not top[n] > 0 else None)
        text = None if failure else TOKEN_LOOKUP_PREFIX + ", ".join(
            json.dumps(cols.vocab[t], ensure_ascii=False) for t in named[n])
        out.append(Explanation(model=model, gelu_variant=variant, layer=layer, neuron=neuron, explainer=TOKEN_LOOKUP,
                               explainer_model=None, prompt_version=TOKEN_LOOKUP_VERSION, candidate=0,
                               explanation=text, failure_reason=failure))
    return out


def token_lookup_simulations(explanations: list[Explanation], cols: RecordColumns) -> pa.Table:
    """`simulations_table(simulate(pair_by_neuron(explanations, records), "token_lookup"))` for the
    records of `cols`: one row per (explanation, top or random record of the valid then the calibration
    split of its neuron), in that order. Explanations whose neuron has no records get no rows.
    `cols` holds one GELU variant (as `pair_by_neuron`, the last variant of a neuron would win)."""
    paired = [(e, cols.neuron_index[(e.model, e.layer, e.neuron)]) for e in explanations
              if cols.has_neuron(e.model, e.layer, e.neuron)]
    simulated, bounds = cols.simulated_rows
    expl_neuron = np.array([n for _, n in paired], np.int64)
    per_expl = (bounds[1:] - bounds[:-1])[expl_neuron]
    rows = simulated[_gather(bounds[:-1][expl_neuron], per_expl)]  # (J,) the record of each simulation
    job_expl = np.repeat(np.arange(len(paired)), per_expl)  # (J,) index into `paired`
    lengths = cols.lengths[rows]
    at = _gather(cols.starts[rows], lengths)

    # 10 where the token is one its explanation names, else 0
    hits = np.zeros((len(paired), len(cols.vocab)), bool)  # (E, V)
    for i, (e, _) in enumerate(paired):
        if e.explanation is not None:
            hits[i, cols.named_ids(e.explanation)] = True
    hit = hits[np.repeat(job_expl, lengths), cols.token_ids[at]]
    failed = np.array([e.explanation is None for e, _ in paired], bool)[job_expl]
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    expected_offsets = np.concatenate(([0], np.cumsum(np.where(failed, 0, lengths)))).astype(np.int32)
    expected = np.where(hit, np.float32(10.0), np.float32(0.0))[~np.repeat(failed, lengths)]

    expl_cols = {
        "explanation_id": pa.array([e.explanation_id for e, _ in paired], pa.string()),
        "explanation_gelu_variant": pa.array([e.gelu_variant for e, _ in paired], pa.string()),
        "failure_reason": pa.array([None if e.explanation is not None else
                                    f"no explanation to simulate ({e.failure_reason})" for e, _ in paired],
                                   pa.string()),
    }
    take = pa.array(job_expl)
    record = cols.table.take(pa.array(rows))  # (J,) rows, no token lists
    schema = TABLES["simulations"]
    columns = {
        **{k: v.take(take) for k, v in expl_cols.items()},
        **{k: record.column(k) for k in ("model", "layer", "neuron", "gelu_variant", "sequence_id", "kind", "split")},
        "simulator": pa.array([TOKEN_LOOKUP] * len(rows), pa.string()),
        "expected_activations": pa.ListArray.from_arrays(
            pa.array(expected_offsets), pa.array(expected, pa.float32()), mask=pa.array(failed)),
        "true_activations": pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(cols.acts[at].astype(np.float32, copy=False))),
    }
    return pa.table({f.name: (columns[f.name].cast(f.type) if f.name in columns else pa.nulls(len(rows), f.type))
                     for f in schema}, schema=schema)
