"""Exact top-k with a deterministic tie-break, for one tile and for merging tiles.

Order everywhere in this package: by value (descending for `largest=True`, ascending otherwise), then
by index ascending. So among equal values the lower index wins a place and comes first, whatever
order the tiles arrive in and whatever `torch.topk` does with ties. Indices are global ids chosen by
the caller so that ascending id means ascending (other_layer, other_neuron) or ascending token id.

`torch.topk` alone is exact on values but leaves the order of equal values unspecified. We ask it for
k + 1 values: a row whose k-th and (k+1)-th values differ cannot have an unselected element equal to
its k-th value, so only the order inside the k needs fixing (a cheap sort of [R, k]). Rows where they
are equal (rare with real weights) are redone with a stable full sort of those rows.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _lexsort(values: Tensor, index: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
    """Sort each row of [R, c] by (value, index ascending)."""
    order = torch.argsort(index, dim=1, stable=True)
    values, index = values.gather(1, order), index.gather(1, order)
    order = torch.argsort(values, dim=1, descending=largest, stable=True)
    return values.gather(1, order), index.gather(1, order)


def tile_topk(
    values: Tensor, k: int, largest: bool = True, dim: int = 1, ordered: bool = True,
) -> tuple[Tensor, Tensor]:
    """Exact top-k of a 2-D tile along `dim`; ties go to the lower position along `dim`.

    Returns (values, positions), both [R, min(k, C)] where R is the size of the other dimension and C
    the size of `dim`; positions are int64 offsets along `dim`. With `ordered` the rows are in the
    package order (value, then position); without it only the chosen set is guaranteed (for callers
    that merge and sort later).
    """
    if values.dim() != 2 or dim not in (0, 1):
        raise ValueError("tile_topk takes a 2-D tensor and dim 0 or 1")
    size = values.shape[dim]
    kk = min(k, size)
    if kk == 0:
        rows = values.shape[1 - dim]
        return values.new_empty((rows, 0)), torch.empty((rows, 0), dtype=torch.long, device=values.device)
    probe = min(kk + 1, size)
    vals, pos = torch.topk(values, probe, dim=dim, largest=largest, sorted=True)
    if dim == 0:
        vals, pos = vals.t(), pos.t()
    boundary_tie = (vals[:, kk - 1] == vals[:, probe - 1]) if probe > kk else None
    vals, pos = vals[:, :kk], pos[:, :kk]
    if ordered and kk > 1 and bool((vals[:, 1:] == vals[:, :-1]).any()):
        vals, pos = _lexsort(vals, pos, largest)
    if boundary_tie is not None and bool(boundary_tie.any()):
        tied = torch.nonzero(boundary_tie).flatten()
        sub = values[tied] if dim == 1 else values[:, tied].t()
        v, p = torch.sort(sub, dim=1, descending=largest, stable=True)  # stable: lower position first
        vals, pos = vals.clone(), pos.clone()
        vals[tied], pos[tied] = v[:, :kk], p[:, :kk]
    return vals, pos


def merge_topk(
    values: Tensor, index: Tensor, new_values: Tensor, new_index: Tensor, k: int, largest: bool = True,
) -> tuple[Tensor, Tensor]:
    """Merge two candidate lists per row ([R, a] and [R, b], any order) into the best k, in order."""
    v, i = _lexsort(torch.cat([values, new_values], 1), torch.cat([index, new_index], 1), largest)
    return v[:, :k].contiguous(), i[:, :k].contiguous()


class RunningTopK:
    """Best k (value, global index) per row over tiles offered one at a time.

    Each tile contributes its exact top-k candidates (the cut decided by the tie rule); candidates are
    kept until they reach `buffer` columns (default 2k), then sorted and cut to k, so memory is at
    most rows × (k + buffer + k) values and ids.
    """

    def __init__(
        self, rows: int, k: int, largest: bool, device: torch.device | str, dtype: torch.dtype,
        buffer: int | None = None,
    ):
        self.k, self.largest, self.buffer = k, largest, max(buffer or 0, 2 * k)
        self.values = torch.empty((rows, 0), dtype=dtype, device=device)
        self.index = torch.empty((rows, 0), dtype=torch.long, device=device)
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._width = 0

    def add_tile(self, tile: Tensor, offset: int, dim: int = 1) -> None:
        """Offer every element of a 2-D tile; an element's global index is offset + its position on `dim`."""
        v, p = tile_topk(tile, self.k, self.largest, dim, ordered=False)
        if v.shape[1] == 0:
            return
        self._pending.append((v, p + offset))
        self._width += v.shape[1]
        if self._width >= self.buffer:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            vals = torch.cat([v for v, _ in self._pending], 1)
            ids = torch.cat([i for _, i in self._pending], 1)
            self.values, self.index = merge_topk(self.values, self.index, vals, ids, self.k, self.largest)
            self._pending, self._width = [], 0

    def result(self) -> tuple[Tensor, Tensor]:
        """(values [R, k'], global indices [R, k']) on the CPU in order, k' = min(k, candidates offered)."""
        self._flush()
        return self.values.cpu(), self.index.cpu()
