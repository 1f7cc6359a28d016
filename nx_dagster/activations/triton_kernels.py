"""The recorder's per-batch work as two Triton kernels per layer (what a GPU runs instead of ~140 ops).

Imported only through `gpu_update.load()`, which sees that Triton is present and, on a machine
without CUDA, that it runs in interpreter mode (TRITON_INTERPRET=1: the tests run these kernels on
the CPU). Both kernels take one program per neuron and read the neuron-major activations [N, B, T]
(any float dtype, computed in float32):

* `layer_stats`: one pass over the neuron's [B, T] block: per-sequence maxima (NaN if the sequence
  has a NaN, as torch.amax), the four power sums of (x − shift) for the moments (float32 within a
  sequence, float64 across sequences), the running maximum, and the sketch bucket of each maximum
  counted into the neuron's histogram (bucket search as `cpu_kernel._bucket`). Sums and maxima are
  kept per row of the block and reduced across rows once, after the loop: at the usual sequence
  lengths a row's reductions stay within one warp, so the loop has no block-wide barrier but the
  one that hands the maxima to the bucket search. The counts are relaxed atomics (an
  acquire-release atomic fences and drops the L1 cache on every step).
* `merge`: the keys of `keys.py` for the top, random and quantile-bin stores from the maxima; a key
  is a candidate only if it beats its store row's floor (its current k-th key), and a row then takes
  its candidates best first, each in place of the row's smallest key while it beats it; the
  activations of the new keys are copied after that, in one [K, T] gather (so the loop over
  candidates touches no global memory). After the first batches almost no key beats a floor, so a
  row usually costs one comparison per sequence.

With unique keys the stores end with exactly the keys (and copied activations) of every other path.
"""

from __future__ import annotations

import triton
import triton.language as tl

from nx_dagster.activations import keys, store

# the key definitions of keys.py and store.py, as compile-time constants
EMPTY = tl.constexpr(store.EMPTY)
ID_MAX = tl.constexpr(keys._ID_MAX)
M32 = tl.constexpr(keys._M32)
NEG_ZERO = tl.constexpr(keys.NEG_ZERO)  # float32 bits of -0.0
QNAN = tl.constexpr(keys.QNAN)  # float32 bits of the canonical NaN
KEY_MAX = tl.constexpr((1 << 63) - 1)  # padding of a store row past k: never its smallest key


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def layer_stats(nbt, shift, sums, vmax, counts, seq_max, edges, guess, B, T, N_BUCKETS,
                BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr):
    """nbt [N, B, T]; shift [N] f32; sums [4, N] f64 (+=); vmax [N] f64; counts [N, N_BUCKETS] i32
    (+=); seq_max [N, B] f32 (written); edges [N_BUCKETS] f64; guess [65536] i32."""
    n = tl.program_id(0).to(tl.int64)
    n_neurons = tl.num_programs(0)
    c = tl.load(shift + n)
    cols = tl.arange(0, BLOCK_T)
    # per-row accumulators, reduced across rows once at the end (a row's reductions stay in a warp)
    s1 = tl.zeros((BLOCK_B,), tl.float64)
    s2 = tl.zeros((BLOCK_B,), tl.float64)
    s3 = tl.zeros((BLOCK_B,), tl.float64)
    s4 = tl.zeros((BLOCK_B,), tl.float64)
    hi = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    nans = tl.zeros((BLOCK_B,), tl.int32)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        in_b = rows < B
        mask = in_b[:, None] & (cols < T)[None, :]
        x = tl.load(nbt + n * B * T + rows[:, None] * T + cols[None, :], mask=mask, other=float("-inf"))
        x = x.to(tl.float32)
        m = tl.reduce(x, 1, _max_nan)  # NaN if the sequence has one (as torch.amax)
        has_nan = m != m
        tl.store(seq_max + n * B + rows, m, mask=in_b)
        y = tl.where(mask, x - c, 0.0)
        y2 = y * y
        s1 += tl.sum(y, axis=1).to(tl.float64)
        s2 += tl.sum(y2, axis=1).to(tl.float64)
        s3 += tl.sum(y2 * y, axis=1).to(tl.float64)
        s4 += tl.sum(y2 * y2, axis=1).to(tl.float64)
        nans = tl.maximum(nans, (in_b & has_nan).to(tl.int32))
        hi = tl.maximum(hi, tl.where(in_b & ~has_nan, m, float("-inf")))
        # bucket: a guess from the float's top 16 bits (a cell spans < 1%, a bucket 2%: the answer is
        # the guess or a neighbour), then checked against the exact float64 edges
        bits = m.to(tl.int32, bitcast=True)
        g = tl.load(guess + ((bits >> 16) & 0xFFFF), mask=in_b, other=0)
        v = m.to(tl.float64)
        for _ in tl.static_range(2):
            g += ((g < N_BUCKETS - 1) & (v > tl.load(edges + g, mask=in_b, other=0.0))).to(tl.int32)
        for _ in tl.static_range(2):
            g -= ((g > 0) & (v <= tl.load(edges + tl.maximum(g - 1, 0), mask=in_b, other=0.0))).to(tl.int32)
        tl.atomic_add(counts + n * N_BUCKETS + g, 1, mask=in_b, sem="relaxed")
    tl.store(sums + n, tl.load(sums + n) + tl.sum(s1, axis=0))
    tl.store(sums + n_neurons + n, tl.load(sums + n_neurons + n) + tl.sum(s2, axis=0))
    tl.store(sums + 2 * n_neurons + n, tl.load(sums + 2 * n_neurons + n) + tl.sum(s3, axis=0))
    tl.store(sums + 3 * n_neurons + n, tl.load(sums + 3 * n_neurons + n) + tl.sum(s4, axis=0))
    top = tl.load(vmax + n)
    seen_nan = (top != top) | (tl.max(nans, axis=0) > 0)  # (tl.maximum drops a NaN)
    top = tl.maximum(top, tl.max(hi, axis=0).to(tl.float64))
    tl.store(vmax + n, tl.where(seen_nan, float("nan"), top))


@triton.jit
def _mix(x):
    """keys._mix: a 32-bit xorshift-multiply hash in int64."""
    x = x & M32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & M32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & M32
    return x ^ (x >> 16)


@triton.jit
def _merge_row(keys, acts, floor, row, K, cand, src, T,
               BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr):
    """Store row `row` (keys [R, K] i64, acts [R, K, T] f32, floor [R] i64) takes the candidates
    cand [BLOCK_B] (EMPTY = none) that beat it; `src` points at this neuron's [B, T] activations."""
    c = tl.where(cand > tl.load(floor + row), cand, EMPTY)
    n_new = tl.minimum(tl.sum((c != EMPTY).to(tl.int32), axis=0), K)
    if n_new > 0:
        kk = tl.arange(0, BLOCK_K)
        row_keys = tl.load(keys + row * K + kk, mask=kk < K, other=KEY_MAX)
        bb = tl.arange(0, BLOCK_B)
        taken = tl.full((BLOCK_K,), -1, tl.int32)  # the batch row whose activations each slot takes
        for _ in range(n_new):  # best candidate first; each replaces the smallest key it beats
            best = tl.max(c, axis=0)
            b = tl.min(tl.where(c == best, bb, BLOCK_B), axis=0)
            low = tl.min(row_keys, axis=0)
            slot = tl.min(tl.where(row_keys == low, kk, BLOCK_K), axis=0)
            put = (kk == slot) & (best > low)
            row_keys = tl.where(put, best, row_keys)
            taken = tl.where(put, b, taken)
            c = tl.where(bb == b, EMPTY, c)
        # a slot takes at most one key per batch (a later candidate is below every earlier one), so
        # the activations are copied once, after the keys: one [K, T] gather
        t = tl.arange(0, BLOCK_T)
        copy = (taken >= 0)[:, None] & (t < T)[None, :]
        x = tl.load(src + taken[:, None].to(tl.int64) * T + t[None, :], mask=copy)
        tl.store(acts + (row * K + kk[:, None]) * T + t[None, :], x.to(tl.float32), mask=copy)
        tl.store(keys + row * K + kk, row_keys, mask=kk < K)
        tl.store(floor + row, tl.min(row_keys, axis=0))


@triton.jit
def merge(nbt, seq_max, seq_ids, salt, boundaries, B, T,
          top_keys, top_acts, top_floor, K_TOP, rnd_keys, rnd_acts, rnd_floor, K_RND,
          bin_keys, bin_acts, bin_floor, K_BIN,
          BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, N_BINS: tl.constexpr):
    """seq_max [N, B] f32 and seq_ids [B] i64 -> keys of the three stores (value key, hash key, the
    rotated hash key in the bin given by boundaries [N, N_BINS - 1] f64); bin b of neuron n is row
    b·N + n of the bin store."""
    n = tl.program_id(0).to(tl.int64)
    n_neurons = tl.num_programs(0)
    bb = tl.arange(0, BLOCK_B)
    valid = bb < B
    m = tl.load(seq_max + n * B + bb, mask=valid, other=0.0)
    sid = tl.load(seq_ids + bb, mask=valid, other=0)
    low_id = ID_MAX - sid
    bits = m.to(tl.int32, bitcast=True).to(tl.int64) & M32
    bits = tl.where(bits == NEG_ZERO, 0, bits)  # -0.0 is +0.0; every NaN is one NaN (keys.value_key)
    bits = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, QNAN, bits)
    mono = tl.where(bits >= (1 << 31), M32 - bits, bits | (1 << 31))
    src = nbt + n * B * T
    vkey = tl.where(valid, (mono << 31) | low_id, EMPTY)
    _merge_row(top_keys, top_acts, top_floor, n, K_TOP, vkey, src, T, BLOCK_B, BLOCK_K, BLOCK_T)
    h = _mix(sid * 0x27D4EB2F + tl.load(salt + n))
    rkey = tl.where(valid, (h << 31) | low_id, EMPTY)
    _merge_row(rnd_keys, rnd_acts, rnd_floor, n, K_RND, rkey, src, T, BLOCK_B, BLOCK_K, BLOCK_T)
    bkey = ((((h << 16) | (h >> 16)) & M32) << 31) | low_id
    m64 = m.to(tl.float64)
    b_of = tl.zeros((BLOCK_B,), tl.int32)
    for q in tl.static_range(N_BINS - 1):
        b_of += (m64 > tl.load(boundaries + n * (N_BINS - 1) + q)).to(tl.int32)
    for q in tl.static_range(N_BINS):
        cand = tl.where(valid & (b_of == q), bkey, EMPTY)
        _merge_row(bin_keys, bin_acts, bin_floor, q * n_neurons + n, K_BIN, cand, src, T, BLOCK_B, BLOCK_K, BLOCK_T)
