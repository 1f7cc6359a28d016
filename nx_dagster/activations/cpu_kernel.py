"""The recorder's per-batch work on the CPU as one fused pass (numba), instead of ~30 torch ops.

For each neuron (in parallel) it reads that neuron's [B, T] block of the neuron-major activations
once: per-sequence maxima and the four power sums for the moments, then the sketch counts, the
quantile boundaries when due, and the three stores (top, random, quantile bins), each updated by
replacing its smallest key while a candidate beats it. With unique keys that gives exactly the
torch path's result (`recorder.LayerRecorder._update_torch`): the same keys, the same copied
activations, the same sketch counts; only the moments' float sums are added in another order.
Keys, hashes and buckets follow `keys.py` and `sketch.py` bit for bit (tests check both paths).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from nx_dagster import settings
from nx_dagster.activations.keys import _ID_MAX, _M32, NEG_ZERO, QNAN
from nx_dagster.activations.layer_state import LayerState, toy
from nx_dagster.activations.sketch import EDGES, N_BUCKETS, bucket_guesses
from nx_dagster.vocab import QUANTILE_BOUNDARIES

try:  # numba is a dependency; without it (an unsupported Python, say) the torch path runs instead
    import numba
except ImportError:  # pragma: no cover - exercised only where numba cannot install
    numba = None

_EDGES = EDGES.numpy()
_Q = np.array(QUANTILE_BOUNDARIES, dtype=np.float64)


def available() -> bool:
    """Whether the fused kernel can run: numba imported, and NX_RECORDER does not ask for the torch
    ops instead (`torch`: sparse updates, `dense`: fixed-shape updates) or the Triton kernels."""
    return numba is not None and settings.current().nx_recorder not in ("torch", "dense", "triton")


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True)

    @_jit
    def _mix(x):
        x = x & _M32
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
        return x ^ (x >> 16)

    @_jit
    def _value_key(bits, seq_id):
        u = np.int64(bits) & _M32
        if u == NEG_ZERO:  # -0.0 is +0.0; every NaN is the one NaN above +inf (keys.value_key)
            u = 0
        elif (u & 0x7FFFFFFF) > 0x7F800000:
            u = QNAN
        mono = _M32 - u if u >= (1 << 31) else u | (1 << 31)
        return (mono << 31) | (_ID_MAX - seq_id)

    @_jit
    def _bucket(v, bits, edges, guess):
        """First i with v <= edges[i]: a table guess from the float's top 16 bits (a cell spans < 1%,
        a bucket 2%), then corrected against the exact edges."""
        if v != v:
            return len(edges) - 1
        i = guess[(bits >> 16) & 0xFFFF]
        while i < len(edges) - 1 and v > edges[i]:
            i += 1
        while i > 0 and v <= edges[i - 1]:
            i -= 1
        return i

    @_jit
    def _insert(keys, acts, floor, row, key, src):
        """Put `key` (> floor[row]) with activations `src` [T] in place of the row's smallest key."""
        k = keys.shape[1]
        slot = 0
        for j in range(1, k):
            if keys[row, j] < keys[row, slot]:
                slot = j
        keys[row, slot] = key
        acts[row, slot, :] = src
        low = keys[row, 0]
        for j in range(1, k):
            low = min(low, keys[row, j])
        floor[row] = low

    @_jit
    def _insert_best(keys, acts, floor, row, cand, count, rows, seq_ids):
        """Insert the best of `count` candidate keys cand[:count] (each > floor[row] when gathered);
        `rows` [B, T] holds the batch's activations for this neuron, found by the key's sequence id."""
        if count == 0:
            return
        k = keys.shape[1]
        chosen = cand[:count]
        if count > k:
            chosen.sort()  # in place, in this neuron's scratch buffer
            chosen = chosen[count - k:]
        for j in range(len(chosen)):
            key = chosen[j]
            if key > floor[row]:
                sid = _ID_MAX - (key & _ID_MAX)
                b = 0
                while seq_ids[b] != sid:
                    b += 1
                _insert(keys, acts, floor, row, key, rows[b])

    @numba.njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})
    def _update(post, seq_ids, shift, sums, vmax, counts, boundaries, refresh, salt,
                top_keys, top_acts, top_floor, rnd_keys, rnd_acts, rnd_floor, bin_keys, bin_acts, bin_floor,
                edges, qs, guess):
        n_neurons, n_seq, seq_len = post.shape
        for n in numba.prange(n_neurons):
            maxima = np.empty(n_seq, dtype=np.float32)
            bits = maxima.view(np.int32)  # the same memory: the maxima's IEEE bits
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            s4 = 0.0
            c = shift[n]
            for b in range(n_seq):
                row = post[n, b]
                m = row[0]
                for t in range(seq_len):  # two loops over the row (in L1): each one vectorizes
                    m = max(m, row[t])
                p1 = np.float32(0.0)
                p2 = np.float32(0.0)
                p3 = np.float32(0.0)
                p4 = np.float32(0.0)
                for t in range(seq_len):
                    y = row[t] - c
                    y2 = y * y
                    p1 += y
                    p2 += y2
                    p3 += y2 * y
                    p4 += y2 * y2
                if p1 != p1:  # a NaN in the row: the maximum is NaN too, as torch.amax has it
                    m = np.float32(np.nan)
                maxima[b] = m
                s1 += p1
                s2 += p2
                s3 += p3
                s4 += p4
                if m != m or m > vmax[n]:
                    vmax[n] = m
                counts[n, _bucket(np.float64(m), bits[b], edges, guess)] += 1
            sums[0, n] += s1
            sums[1, n] += s2
            sums[2, n] += s3
            sums[3, n] += s4
            if refresh:  # this neuron's quantile boundaries from its counts so far: one pass
                n_buckets = counts.shape[1]
                total = 0
                for i in range(n_buckets):
                    total += counts[n, i]
                target = np.empty(len(qs), dtype=np.int64)
                for q in range(len(qs)):
                    target[q] = max(1, int(math.ceil(qs[q] * total)))
                q = 0
                run = 0
                for i in range(n_buckets):
                    run += counts[n, i]
                    while q < len(qs) and run >= target[q]:
                        boundaries[n, q] = edges[i]
                        q += 1
                    if q == len(qs):
                        break
                for q2 in range(q, len(qs)):
                    boundaries[n, q2] = edges[n_buckets - 1]
            hn = salt[n]
            # Candidates are gathered per store row first; a row with more than k of them (the first
            # batches) takes only its k best, so no candidate is copied in only to be evicted.
            top_c = np.empty(n_seq, dtype=np.int64)
            rnd_c = np.empty(n_seq, dtype=np.int64)
            bin_c = np.empty((len(qs) + 1, n_seq), dtype=np.int64)
            n_bin = np.zeros(len(qs) + 1, dtype=np.int64)
            n_top = 0
            n_rnd = 0
            for b in range(n_seq):
                sid = seq_ids[b]
                low_id = _ID_MAX - sid
                key = _value_key(bits[b], sid)
                if key > top_floor[n]:
                    top_c[n_top] = key
                    n_top += 1
                h = _mix(sid * 0x27D4EB2F + hn)
                rkey = (h << 31) | low_id
                if rkey > rnd_floor[n]:
                    rnd_c[n_rnd] = rkey
                    n_rnd += 1
                m = np.float64(maxima[b])
                bn = 0
                for q in range(boundaries.shape[1]):
                    if m > boundaries[n, q]:
                        bn += 1
                bkey = ((((h << 16) | (h >> 16)) & _M32) << 31) | low_id
                if bkey > bin_floor[bn * n_neurons + n]:
                    bin_c[bn, n_bin[bn]] = bkey
                    n_bin[bn] += 1
            _insert_best(top_keys, top_acts, top_floor, n, top_c, n_top, post[n], seq_ids)
            _insert_best(rnd_keys, rnd_acts, rnd_floor, n, rnd_c, n_rnd, post[n], seq_ids)
            for bn in range(len(qs) + 1):
                _insert_best(bin_keys, bin_acts, bin_floor, bn * n_neurons + n, bin_c[bn], n_bin[bn], post[n], seq_ids)


def update(rec: LayerState, seq_ids: torch.Tensor, nbt: torch.Tensor, refresh: bool) -> None:
    """Apply one batch to the layer's state `rec`; nbt [N, B, T] float32 contiguous on the CPU. The kernel
    is compiled (or loaded from numba's cache) on the first call."""
    mom, sk = rec.moments, rec.sketch
    if mom.shift is None:
        mom.shift = nbt.reshape(nbt.shape[0], -1).mean(dim=1)
    if rec.boundaries is None:
        rec.boundaries = torch.zeros((nbt.shape[0], len(QUANTILE_BOUNDARIES)), dtype=torch.float64)
    np_ = lambda t: t.numpy()  # noqa: E731 - views, no copies
    _update(np_(nbt), np_(seq_ids), np_(mom.shift), np_(mom.sums), np_(mom.max), np_(sk.counts),
            np_(rec.boundaries), refresh, np_(rec.salt),
            np_(rec.top.keys), np_(rec.top.acts), np_(rec.top.floor),
            np_(rec.random.keys), np_(rec.random.acts), np_(rec.random.floor),
            np_(rec.bins.keys), np_(rec.bins.acts), np_(rec.bins.floor), _EDGES, _Q, np_(bucket_guesses()))
    mom.n += nbt.shape[1] * nbt.shape[2]


def warm() -> bool:
    """Compile (or load from numba's cache) the kernel on a toy batch; False where it cannot run."""
    if not available():
        return False
    update(toy("cpu"), torch.arange(3), torch.rand(2, 3, 4), refresh=True)
    return True


assert N_BUCKETS == len(_EDGES)
