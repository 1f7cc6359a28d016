"""Integer sort keys that make every selection exact and deterministic.

A key packs (primary value, sequence id) into one non-negative int64 so that `topk` on keys never
meets a tie: larger key = preferred. Sequence ids must be < 2**31.
  * top records:     primary = the float32 activation mapped to a monotone uint32; equal activations
                     prefer the lower sequence id. -0.0 and +0.0 are one value, and every NaN is one
                     value above +inf (as torch.topk and torch.sort rank NaN), whatever its sign bit.
  * random samples:  primary = a 32-bit hash of (seed, layer, neuron, sequence id): a uniform random
                     order, independent per neuron and independent of batching.
"""

from __future__ import annotations

import torch

_ID_BITS = 31
_ID_MAX = (1 << _ID_BITS) - 1
_M32 = (1 << 32) - 1
NEG_ZERO = 1 << 31  # the float32 bits of -0.0
QNAN = 0x7FC00000  # the float32 bits of the canonical (positive, quiet) NaN


def value_key(values: torch.Tensor, seq_ids: torch.Tensor) -> torch.Tensor:
    """values [B, N] float, seq_ids [B] int64 -> keys [B, N] int64 (bigger = larger value, then lower id)."""
    bits = values.float().contiguous().view(torch.int32).long() & _M32  # raw IEEE bits as uint32
    bits = torch.where(bits == NEG_ZERO, 0, bits)  # -0.0 == +0.0: a tie, broken by the sequence id
    bits = torch.where((bits & 0x7FFFFFFF) > 0x7F800000, QNAN, bits)  # every NaN: one NaN, above +inf
    negative = bits >= (1 << 31)
    mono = torch.where(negative, _M32 - bits, bits | (1 << 31))  # monotone in the float value
    return (mono << _ID_BITS) | (_ID_MAX - seq_ids)[:, None]


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply), computed in int64 and masked: same on CPU and CUDA."""
    x = x & _M32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


def neuron_salt(seed: int, layer: int, neurons: torch.Tensor, stream: int = 0) -> torch.Tensor:
    """The per-neuron half of the hash: computed once per layer, not per batch."""
    base = _mix(torch.tensor((seed * 1_000_003 + layer * 7919 + stream * 104_729) & _M32, device=neurons.device))
    return _mix(neurons + base)


def hash_key(seed: int, layer: int, neurons: torch.Tensor, seq_ids: torch.Tensor, stream: int = 0,
             salt: torch.Tensor | None = None) -> torch.Tensor:
    """neurons [N] int64, seq_ids [B] int64 -> keys [B, N] int64 from a per-(neuron, sequence) hash."""
    hn = neuron_salt(seed, layer, neurons, stream) if salt is None else salt  # [N]
    h = _mix(seq_ids[:, None] * 0x27D4EB2F + hn[None, :])  # [B, N]
    return (h << _ID_BITS) | (_ID_MAX - seq_ids)[:, None]


def rotate_key(keys: torch.Tensor) -> torch.Tensor:
    """A second uniform random order from a hash key: its 32 hash bits rotated by 16 (a few integer
    ops instead of a second hash)."""
    h = keys >> _ID_BITS
    h = ((h << 16) | (h >> 16)) & _M32
    return (h << _ID_BITS) | (keys & _ID_MAX)


def key_seq_id(keys: torch.Tensor) -> torch.Tensor:
    return _ID_MAX - (keys & _ID_MAX)
