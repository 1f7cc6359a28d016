"""Device → host copies of many result tensors in a few large transfers through pinned memory.

A copy to pageable host memory is synchronous and staged through a driver buffer (the recorder's
`finish` spent 357 ms in 168 of them for GPT-2 small). Here tensors of one dtype are packed on the
device into one flat buffer (device bandwidth: cheap) and streamed to the host through two pinned
staging buffers of CHUNK_BYTES, allocated once per device: the GPU copies chunk i+1 while the CPU
moves chunk i into the result, and nothing but those chunk events is waited for. The results are
ordinary (pageable) CPU tensors: views of one buffer per dtype, with their shapes.
"""

from __future__ import annotations

from dataclasses import replace

import torch

GROUP_BYTES = 512 << 20  # one device-side pack per dtype per ~512 MiB: the device holds that much extra at most
CHUNK_BYTES = 16 << 20
_STAGING: dict[torch.device, list[torch.Tensor]] = {}


def to_host(tensors: list[torch.Tensor], chunk_bytes: int = CHUNK_BYTES) -> list[torch.Tensor]:
    """The same tensors on the CPU, in order; CPU tensors are returned as they are."""
    out: list[torch.Tensor | None] = [t if t.device.type == "cpu" else None for t in tensors]
    groups: dict[torch.dtype, list[list[int]]] = {}
    for i, t in enumerate(tensors):
        if t.device.type == "cpu":
            continue
        g = groups.setdefault(t.dtype, [[]])
        if g[-1] and sum(tensors[j].nbytes for j in g[-1]) + t.nbytes > GROUP_BYTES:
            g.append([])
        g[-1].append(i)
    for dtype, parts in groups.items():
        for idx in parts:
            flat = torch.cat([tensors[i].reshape(-1) for i in idx])  # one device-side pack
            host = torch.empty(flat.shape, dtype=dtype)
            if flat.device.type == "cuda":
                _staged_copy(flat, host, chunk_bytes)
            else:
                host.copy_(flat)
            offset = 0
            for i in idx:
                n = tensors[i].numel()
                out[i] = host[offset:offset + n].view(tensors[i].shape)
                offset += n
    return out


def _staged_copy(src: torch.Tensor, dst: torch.Tensor, chunk_bytes: int) -> None:
    """src [n] on a CUDA device -> dst [n] pageable CPU, through two pinned buffers (double-buffered)."""
    step = max(1, chunk_bytes // src.element_size())
    need = step * src.element_size()
    if src.device not in _STAGING or _STAGING[src.device][0].numel() < need:
        _STAGING[src.device] = [torch.empty(need, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    bufs = [b[:need].view(src.dtype) for b in _STAGING[src.device]]
    events = [torch.cuda.Event(), torch.cuda.Event()]
    stream = torch.cuda.current_stream(src.device)
    pending: list[tuple[int, int, int]] = []  # (buffer, offset, length) copied to a buffer, not yet drained

    def drain() -> None:
        slot, off, length = pending.pop(0)
        events[slot].synchronize()
        dst[off:off + length].copy_(bufs[slot][:length])

    for i, off in enumerate(range(0, src.numel(), step)):
        slot = i % 2
        if len(pending) == 2:  # the oldest copy used this buffer: move it out first
            drain()
        length = min(step, src.numel() - off)
        bufs[slot][:length].copy_(src[off:off + length], non_blocking=True)
        events[slot].record(stream)
        pending.append((slot, off, length))
    while pending:
        drain()


def records_to_host(recs: list) -> list:
    """Every tensor of LayerRecords `recs` on the CPU, in a few large pinned transfers (`to_host`)."""
    flat = []
    for r in recs:
        flat += [r.neurons, *r.top, *r.random, *r.quantile, *r.stats.values()]
    it = iter(to_host(flat))
    take = lambda n: tuple(next(it) for _ in range(n))  # noqa: E731
    return [replace(r, neurons=next(it), top=take(2), random=take(2), quantile=take(3),
                    stats=dict(zip(r.stats, take(len(r.stats))))) for r in recs]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch onto a GPU through pinned memory, without waiting (a pageable copy waits for the
    GPU's queue to drain, stalling the back-to-back batches)."""
    if t.device == device or t.device.type != "cpu" or torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
