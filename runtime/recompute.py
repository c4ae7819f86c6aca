"""Phase III recompute of a layer's K, V from fetched layer inputs x, as CUDA graphs in
width buckets.

Eager, the recompute is some 25 small torch calls per layer (norm, the K/V GEMM, RoPE,
packing, the slot writes): 1069 µs of host time per LLaMA-7B layer on the H100 host
against 587 for OPT (fifth validation matrix), and the host sets the pace of a Phase III
step. Its width (rows per sequence) changes from step to step, so it is captured once
per layer and width bucket (``alisa.sim.models.recompute_width_bucket``: at most a
quarter wider than the rows, which the simulator's GEMM time uses too). The graph reads
the layer's true width from the device (the selection graph wrote it): the fetched rows
lie in staging as [B, width], and padding rows recompute a real row again and land in
the trash slot (their landing slots are already the trash slot).

On the CPU (tests) the same body runs eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch

from alisa.sim.models import recompute_width_bucket, recompute_width_buckets

from .device import capture_graphs

if TYPE_CHECKING:
    from .slot_cache import SlotCache

KvFromInput = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Recompute:
    def __init__(
        self, cache: SlotCache, kv_from_input: KvFromInput, width: torch.Tensor, dst: torch.Tensor, pos: torch.Tensor
    ) -> None:
        """width [L] int64: each layer's recomputed rows per sequence this step; dst, pos
        [L, B, K]: the rows' flat landing slots and positions (the selection fills all three)."""
        self.c, self.kv_from_input = cache, kv_from_input
        self.width, self.dst, self.pos = width, dst, pos
        self.j = torch.arange(dst.shape[-1], device=dst.device)
        self._g: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}

    def body(self, layer: int, wb: int) -> None:
        c, B = self.c, self.c.B
        w = self.width[layer]
        # row j of sequence b lies at b * w + j in staging; past w, repeat the last row
        src = c.b_ar[:, None] * w + torch.minimum(self.j[:wb], (w - 1).clamp(min=0))
        x = c.land_x[layer % 2].index_select(0, src.reshape(-1)).view(B, wb, c.h)
        k, v = self.kv_from_input(layer, x, self.pos[layer, :, :wb])
        rows, sc = c._pack(k, v)
        c._write_slots(
            layer,
            self.dst[layer, :, :wb].reshape(-1),
            rows.reshape(B * wb, 2, c.Hkv, c.hd),
            sc.reshape(B * wb, 2, c.Hkv) if sc is not None else None,
        )

    def run(self, layer: int, rows: int) -> None:
        """Recompute this layer's ``rows`` rows per sequence (known on the host from the
        selection's host part) and land them."""
        if rows <= 0:
            return
        wb = recompute_width_bucket(rows, self.dst.shape[-1])
        g = self._g.get((layer, wb))
        if g is not None:
            g.replay()
        else:
            self.body(layer, wb)

    def capture(self, max_rows: int) -> None:
        """Capture every layer's graph at each bucket up to ``max_rows`` (the widest the
        run's plans recompute), sharing one memory pool: they run one at a time."""
        c = self.c
        if not c.d.cuda or max_rows <= 0 or self._g:
            return
        K = self.dst.shape[-1]
        keys = [(l, wb) for l in range(c.L) for wb in recompute_width_buckets(min(max_rows, K), K)]
        self._g = capture_graphs(c.d.dev, {key: partial(self.body, *key) for key in keys}, warmups=1)
