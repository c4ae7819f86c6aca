"""The device gather (``policy.gather: device``): the GPU fetches a step's missed token rows
itself, reading them straight from the pinned host copy over PCIe.

With the host gather (``fetch.py``) the CPU copies each layer's rows into pinned staging
and issues one H2D copy; on the lent H100s that host work (0.3-0.8 ms a LLaMA-7B layer,
its speed varying 1.5-2x from run to run with the VM's vCPUs) set the pace of ALISA's
spilling steps, and it needs the selection's row ids on the host, a round trip each step.
Here a Triton kernel (``gather_host_layer``) on the H2D stream reads the rows through
unified addressing into the GPU landing buffer of the layer's parity, taking the row ids
and counts from the selection's device buffers, so the host only issues it: one graph
replay and two stream events a layer, and no wait for the selection. The kernel runs on
a few programs (``PROGRAMS``) so the compute stream's kernels keep most SMs; calibration
times it and how it and the layers beside it slow each other (``zero_copy`` in the
profile). The one kernel reads all of a layer's parts (KV rows, INT8 scales, inputs
x): with one kernel per part, Phase III steps whose plan fetched a few KV rows beside many
x rows ran ~1.9x slower in the executor (gathers at 12-15 GB/s), though the same kernels
alone ran at full rate (``benchmarks/debug/mixed_gather.py``; docs/validation.md).

Ordering: the H2D stream waits for the step's selection (the row ids), and before layer
l refills the landing buffer of its parity, for the compute stream to have consumed layer
l - 2's rows (landed them in slots, recomputed from x); the compute stream waits for
layer l's gather before it lands and attends. The rows read are the host copy's older
tokens: the newest sit in SWA's window, on the GPU, until the host has stored them.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from alisa.kernels.swa_triton import gather_host_layer, gather_host_rows

from .device import capture_graphs, present

if TYPE_CHECKING:
    from .slot_cache import SlotCache

PROGRAMS = 8  # on the H100: ~43 GB/s with 16 KB rows; the GEMMs beside it ~20% slower (uva_gather.py)
BLOCK = 8192  # elements per program iteration: a whole LLaMA-7B KV row
WARPS = 8


class DeviceFetcher:
    def __init__(
        self, cache: SlotCache, graphs: bool, fused: bool = True, programs: int = PROGRAMS, dry: bool = False
    ) -> None:
        """fused: one kernel a layer for all its parts (``gather_host_layer``) instead of
        one per part (KV, INT8 scales, x); programs: the gather's programs (SMs held);
        dry: launch no gather (calibration's step probe times the layers alone)."""
        c = cache
        self.fused, self.programs, self.dry = fused, programs, dry
        assert c.write_through and c.selector is not None
        self.c, self.d, self.sel = c, c.d, c.selector
        self.graphs = graphs and c.d.cuda
        cuda = c.d.cuda
        self.fetched = [torch.cuda.Event() for _ in range(c.L)] if cuda else []
        self.consumed_evt = [torch.cuda.Event() for _ in range(2)] if cuda else []
        self.selected = torch.cuda.Event() if cuda else None
        self._g: dict[int, torch.cuda.CUDAGraph] = {}
        B, M, N = c.B, c.M, c.N
        self.kv_row_bytes = c.host_kv[0, 0, 0].numel() * c.host_kv.element_size()
        self.sc_row_bytes = present(c.host_scale)[0, 0, 0].numel() * 2 if c.int8 else 0
        self.x_row_bytes = c.h * present(c.host_x).element_size() if c.keep_inputs else 0
        self._src_kv = [c.host_kv[l].view(N * B, -1) for l in range(c.L)]
        self._src_sc = [present(c.host_scale)[l].view(N * B, -1) for l in range(c.L)] if c.int8 else []
        self._src_x = [present(c.host_x)[l].view(N * B, c.h) for l in range(c.L)] if c.keep_inputs else []
        self._land_kv = [c.land_kv[p].view(B * M, -1) for p in range(2)]
        self._land_sc = [c.land_sc[p].view(B * M, -1) for p in range(2)] if c.int8 else []
        if dry:  # nothing will land: finite rows keep the layers' arithmetic (and timing) ordinary
            for t in [*c.land_kv, *(c.land_sc if c.int8 else []), *(c.land_x if c.keep_inputs else [])]:
                t.zero_()

    # -- the device side ---------------------------------------------------------------------
    def body(self, l: int) -> None:
        """Layer l's rows from the host copy into the landing buffer of its parity; the
        counts are the selection's (``wk_buf``, ``rec_width``), read on the device."""
        c, s, p = self.c, self.sel, l % 2
        kw: dict[str, Any] = {"programs": self.programs, "block": BLOCK, "num_warps": WARPS}
        if self.fused:
            gather_host_layer(
                (self._land_kv[p], self._src_kv[l]),
                s.kv_rows_dev[l],
                c.wk_buf[l],
                sc=(self._land_sc[p], self._src_sc[l]) if c.int8 else None,
                x=(c.land_x[p], self._src_x[l]) if c.keep_inputs else None,
                x_idx=s.x_rows_dev[l] if c.keep_inputs else None,
                x_width=s.rec_width[l : l + 1] if c.keep_inputs else None,
                **kw,
            )
            return
        gather_host_rows(self._land_kv[p], self._src_kv[l], s.kv_rows_dev[l], c.wk_buf[l], **kw)
        if c.int8:
            gather_host_rows(self._land_sc[p], self._src_sc[l], s.kv_rows_dev[l], c.wk_buf[l], **kw)
        if c.keep_inputs:
            gather_host_rows(c.land_x[p], self._src_x[l], s.x_rows_dev[l], s.rec_width[l : l + 1], **kw)

    def capture(self) -> None:
        if self.graphs and not self._g:
            self._g = capture_graphs(self.d.dev, {l: partial(self.body, l) for l in range(self.c.L)}, warmups=1)

    # -- the host side -------------------------------------------------------------------------
    def start_step(self, after: Any = None) -> None:
        """After the step's selection was issued on the compute stream: the gathers wait
        for it (and for ``after``, a D2H mark: the prefill's rows reaching the host copy)."""
        if not self.d.cuda:
            return
        assert self.selected is not None  # made on a CUDA device
        self.selected.record(self.d.compute)
        self.d.h2d.wait_event(self.selected)
        if after is not None:
            self.d.h2d.wait_event(after)

    def issue(self, l: int, mark: Any = None) -> tuple[Any, Any] | None:
        """Queue layer l's gather on the H2D stream (``mark``: traced, events around it)."""
        if l >= self.c.L:
            return None
        d = self.d
        with d.on(d.h2d):
            if d.cuda and l >= 2:
                d.h2d.wait_event(self.consumed_evt[l % 2])  # layer l - 2 has landed its rows
            a = mark(d.h2d) if mark else None
            g = self._g.get(l)
            if self.dry:
                pass
            elif g is not None:
                g.replay()
            else:
                self.body(l)
            b = mark(d.h2d) if mark else None
            if d.cuda:
                self.fetched[l].record(d.h2d)
        return (a, b) if mark else None

    def wait(self, l: int) -> None:
        """The compute stream waits for layer l's rows."""
        if self.d.cuda:
            self.d.compute.wait_event(self.fetched[l])

    def consumed(self, l: int) -> None:
        """Layer l's rows are landed (and recomputed from): its parity's buffer may refill."""
        if self.d.cuda:
            self.consumed_evt[l % 2].record(self.d.compute)

    def layer_bytes(self, wk: int, wx: int) -> int:
        """Bytes a layer's gather reads: every sequence's rows up to the widest's count."""
        return self.c.B * (wk * (self.kv_row_bytes + self.sc_row_bytes) + wx * self.x_row_bytes)
