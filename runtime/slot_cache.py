"""ALISA's token-level KV cache on a real GPU: a resident pool of C slots per sequence and
layer, a write-through host copy, SWA selection, and the bookkeeping of which token sits
in which slot.

Layout (all layers in one tensor so a step's selection runs once for every layer):

* GPU pool   [L, B, C+1, 2, Hkv, d] (K and V of a token are one row; slot C is a trash
  slot that padded writes land in); INT8 adds scales [L, B, C+1, 2, Hkv].
* host copy  [L, N, B, 2, Hkv, d] pinned (token-major, so one token of every sequence is
  one contiguous row for the write-through), and the layer inputs x [L, N, B, h] for
  recompute. Allocated only when the run will outgrow the cache.
* importance [L, B, 1, N] fp32 per sequence (shared by its KV heads: a fetched token is a
  whole row), with a ring of the last k steps' (token, weight) lists for the Triton
  ``importance_update`` kernel.

Per decode step (``select``): the window is the newest w tokens (always resident, since
C >= a); the global part is the top g = a - w earlier tokens by importance. In ``plan``
mode the step fetches exactly the plan's count of misses (the top-m non-resident tokens
and the top g - m resident ones), so real and simulated runs move the same bytes and
only the timing model is tested; in ``free`` mode the pure SWA selection is served and
its misses are whatever it picks. Incoming tokens (the new one and the misses) take the
slots of the least recently used unselected tokens; every token has a host copy, so an
eviction is just forgetting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from alisa.kernels.swa_triton import importance_update, quantize_kv, scatter_rows, sparse_decode_attention
from alisa.sim.models import prompt_importance_rows

from .device import Device, present
from .fetch import HostFetcher, LayerFetch
from .spill_select import SpillSelector

NEG_INF = float("-inf")


def kv_rows(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """k, v [B, Hkv, T, d] -> fp16 cache rows [B, T, 2, Hkv, d] (a token's K and V together)."""
    return torch.stack((k, v), dim=1).permute(0, 3, 1, 2, 4).to(torch.float16)


@dataclass
class StepSelection:
    """A step's selection, as the executor needs it. For a spilling step: the landing slots
    of recomputed rows (device) and, after ``SlotCache.resolve``, the host part (views of
    pinned int32 memory, valid for this step)."""

    n: int
    a: int
    spills: bool = False
    dst_x: torch.Tensor | None = None  # [L, B, K] flat slots of recomputed rows
    pos_x: torch.Tensor | None = None  # [L, B, K] their positions
    widths: torch.Tensor | None = None  # [L, 2] rows per sequence fetched as KV, as x
    kv_rows: torch.Tensor | None = None  # [L, B, K] host rows (token * B + b) fetched as KV
    x_rows: torch.Tensor | None = None  # [L, B, K] host rows whose inputs x are fetched
    recomputed: int = 0  # tokens recomputed, all layers and sequences
    free_misses: float = 0.0  # mean misses per sequence and layer that pure SWA would have had


class SlotCache:
    def __init__(
        self,
        device: Device,
        *,
        layers: int,
        batch: int,
        max_tokens: int,
        capacity: int,
        kv_heads: int,
        head_dim: int,
        hidden: int,
        int8: bool,
        write_through: bool,
        keep_inputs: bool,
        swa: bool,
        history: int,
        ring_tokens: int,
        max_fetch: int,
        act_dtype: torch.dtype,
        attend_max: int,
        selection: str = "plan",
        global_max: int = 0,
    ) -> None:
        self.d = device
        dev = device.dev
        L, B, N, C = layers, batch, max_tokens, capacity
        self.L, self.B, self.N, self.C, self.S = L, B, N, C, C + 1
        self.Hkv, self.hd, self.h = kv_heads, head_dim, hidden
        self.int8 = int8
        self.kv_dtype = torch.int8 if int8 else torch.float16
        self.identity = C >= N  # every token keeps slot = token id; nothing ever moves
        self.write_through = write_through
        self.keep_inputs = keep_inputs and write_through
        self.swa = swa
        self.k_hist = history
        row = (L, B, self.S, 2, kv_heads, head_dim)
        self.pool = device.alloc("GPU KV cache", row, self.kv_dtype)
        self.scale = device.alloc("GPU KV cache", row[:-1], torch.float16) if int8 else None
        if not self.identity:
            self.tok_slot = device.alloc("cache slot map", (L, B, N + 1), torch.int64, fill=-1)
            self.slot_tok = device.alloc("cache slot map", (L, B, self.S), torch.int64, fill=-1)
            self.slot_tok[..., C] = -2
            self.last_used = device.alloc("cache slot map", (L, B, self.S), torch.int64, fill=-1)
        if self.write_through:
            self.host_kv = device.alloc("host KV copy", (L, N, B, 2, kv_heads, head_dim), self.kv_dtype, host=True)
            self.host_scale = (
                device.alloc("host KV copy", (L, N, B, 2, kv_heads), torch.float16, host=True) if int8 else None
            )
            self.host_x = (
                device.alloc("host layer inputs", (L, N, B, hidden), act_dtype, host=True) if self.keep_inputs else None
            )
            M = max(1, max_fetch)
            self.M = M
            # the step's new rows of every layer, gathered on the GPU by ``place_new`` (in
            # the graphs), go down in one D2H per step into pinned staging of the step's
            # parity; the host worker then scatters them into the host copy (``flush``)
            self.new_all = device.alloc("write-through buffer", (L, B, 2, kv_heads, head_dim), self.kv_dtype)
            self.new_sc_all = device.alloc("write-through buffer", (L, B, 2, kv_heads), torch.float16) if int8 else None
            self.x_all = device.alloc("write-through buffer", (L, B, hidden), act_dtype) if self.keep_inputs else None
            self.wt_host = [
                [
                    device.alloc("host write-through staging", tuple(t.shape), t.dtype, host=True)
                    for t in self._wt_parts()
                ]
                for _ in range(2)
            ]
            self.wt_flushed = [threading.Event(), threading.Event()]
            for e in self.wt_flushed:
                e.set()
            # where a step's fetched rows land: flat slots (b * S + slot) per layer, and
            # the rows per sequence of each layer, read by the scatter inside the graph
            self.dst_buf = device.alloc("step buffers", (L, B, M), torch.int64, fill=0)
            self.wk_buf = device.alloc("step buffers", (L, 1), torch.int32, fill=0)
            self.stage_kv = [
                device.alloc("host fetch staging", (B * M, 2, kv_heads, head_dim), self.kv_dtype, host=True)
                for _ in range(2)
            ]
            self.land_kv = [
                device.alloc("GPU fetch staging", (B * M, 2, kv_heads, head_dim), self.kv_dtype) for _ in range(2)
            ]
            if int8:
                self.stage_sc = [
                    device.alloc("host fetch staging", (B * M, 2, kv_heads), torch.float16, host=True) for _ in range(2)
                ]
                self.land_sc = [
                    device.alloc("GPU fetch staging", (B * M, 2, kv_heads), torch.float16) for _ in range(2)
                ]
            if self.keep_inputs:
                self.stage_x = [
                    device.alloc("host fetch staging", (B * M, hidden), act_dtype, host=True) for _ in range(2)
                ]
                self.land_x = [device.alloc("GPU fetch staging", (B * M, hidden), act_dtype) for _ in range(2)]
        if swa:
            self.score = device.alloc("SWA importance", (L, B, 1, N), torch.float32, fill=0.0)
            self.ring_idx = device.alloc("SWA importance", (L, B, 1, history, ring_tokens), torch.int32, fill=0)
            self.ring_w = device.alloc("SWA importance", (L, B, 1, history, ring_tokens), torch.float32, fill=0.0)
            self.ring_len = device.alloc("SWA importance", (L, B, 1, history), torch.int32, fill=0)
        self.host_tokens_written = 0
        self.b_ar = torch.arange(B, device=dev)
        # this step's lists in fixed buffers, sized for the widest step of the run: the
        # attention and importance kernels read them on the device (with the lengths),
        # so their launches can be captured once and replayed (``DecodeStep``)
        W = self.W = attend_max
        self.sel_buf = device.alloc("step buffers", (L, B, W), torch.int32, fill=0)
        if self.identity and not swa:  # dense: token t in slot t, every token attended
            self.sel_buf.copy_(torch.arange(W, device=dev, dtype=torch.int32).expand(L, B, W))
        self.tok_buf = (
            device.alloc("step buffers", (L, B, W), torch.int32, fill=0) if swa and not self.identity else self.sel_buf
        )
        self.lens_buf = device.alloc("step buffers", (B, kv_heads), torch.int32, fill=0)
        self.new_buf = device.alloc("step buffers", (L, B), torch.int64, fill=0)
        self.ring_slot = device.alloc("step buffers", (1,), torch.int32, fill=0)
        # a spilling run's selection (fixed shapes; one graph on a GPU): ``global_max`` is
        # the run's largest global part a - w, which bounds a step's misses
        self.selector = SpillSelector(self, selection, global_max) if not self.identity else None

    def reset(self) -> None:
        """Forget every token (after a rehearsal); pool contents are overwritten by the prefill."""
        if not self.identity:
            self.tok_slot.fill_(-1)
            self.slot_tok.fill_(-1)
            self.slot_tok[..., self.C] = -2
            self.last_used.fill_(-1)
        if self.swa:
            for t in (self.score, self.ring_idx, self.ring_w, self.ring_len):
                t.zero_()
        if self.write_through:
            for e in self.wt_flushed:
                e.set()
        self.host_tokens_written = 0

    # -- views for the kernels ------------------------------------------------------------
    def kv_views(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """K, V as [B, Hkv, S, d] strided views of the pool (and their scales [B, Hkv, S])."""
        p = self.pool[layer]
        k, v = p[:, :, 0].permute(0, 2, 1, 3), p[:, :, 1].permute(0, 2, 1, 3)
        if self.scale is None:
            return k, v, None, None
        s = self.scale[layer]
        return k, v, s[:, :, 0].permute(0, 2, 1), s[:, :, 1].permute(0, 2, 1)

    def _pack(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """k, v [B, Hkv, T, d] -> rows [B, T, 2, Hkv, d] in the cache's format (+ scales)."""
        return self._format(kv_rows(k, v))

    def _format(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """fp16 rows [..., 2, Hkv, d] -> the cache's format: as they are, or INT8 + scales."""
        if not self.int8:
            return rows, None
        return quantize_kv(rows.contiguous())

    def _write_slots(self, layer: int, flat_slots: torch.Tensor, rows: torch.Tensor, sc: torch.Tensor | None) -> None:
        """rows [B*T, 2, Hkv, d] into slots flat_slots (b * S + slot)."""
        self.pool[layer].view(self.B * self.S, 2, self.Hkv, self.hd).index_copy_(0, flat_slots, rows)
        if sc is not None:
            present(self.scale)[layer].view(self.B * self.S, 2, self.Hkv).index_copy_(0, flat_slots, sc)

    # -- prefill ----------------------------------------------------------------------------
    def prefill_layer(self, layer: int, k: torch.Tensor, v: torch.Tensor, x_in: torch.Tensor) -> int:
        """Prompt KV [B, Hkv, P, d]: the newest min(P, C) tokens into the pool; with
        write-through, every token's KV and input x to the host. Returns D2H bytes."""
        P = k.shape[2]
        keep = min(P, self.C)
        rows, sc = self._pack(k, v)  # [B, P, 2, Hkv, d]
        self.pool[layer][:, :keep] = rows[:, P - keep :]
        if sc is not None:
            present(self.scale)[layer][:, :keep] = sc[:, P - keep :]
        if not self.write_through:
            return 0
        d2h = 0
        tm = rows.transpose(0, 1).contiguous()  # token-major [P, B, ...]
        parts = [(self.host_kv[layer][:P], tm)]
        if sc is not None:
            parts.append((present(self.host_scale)[layer][:P], sc.transpose(0, 1).contiguous()))
        if self.keep_inputs:
            parts.append((present(self.host_x)[layer][:P], x_in.transpose(0, 1).contiguous()))
        self._d2h(parts)
        for _, src in parts:
            d2h += src.numel() * src.element_size()
        return d2h

    def after_prefill(self, P: int) -> None:
        """Slot maps once the prompt is placed: token P - keep + i in slot i."""
        self.host_tokens_written = P if self.write_through else 0
        if self.identity:
            return
        keep = min(P, self.C)
        toks = torch.arange(P - keep, P, device=self.d.dev)
        self.slot_tok[:, :, :keep] = toks
        self.tok_slot[:, :, P - keep : P] = torch.arange(keep, device=self.d.dev)
        self.last_used[:, :, :keep] = 0

    def init_importance(self, layer: int, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        """Importance after the prompt: the attention of its last k query rows (the steps
        still inside the history), summed over all query heads."""
        _, Hq, P, _ = q.shape
        kk = prompt_importance_rows(self.k_hist, P)
        g = Hq // k.shape[1]
        kr = k.repeat_interleave(g, dim=1) if g > 1 else k
        s = torch.matmul(q[:, :, P - kk :].float(), kr.float().transpose(-1, -2)) * scale  # [B, Hq, kk, P]
        rows = torch.arange(P - kk, P, device=q.device)
        s.masked_fill_(torch.arange(P, device=q.device)[None, :] > rows[:, None], NEG_INF)
        w = torch.softmax(s, dim=-1).sum(1)  # [B, kk, P]
        self.score[layer, :, 0, :P] = w.sum(1)
        slots = rows % self.k_hist
        self.ring_idx[layer][:, 0, slots, :P] = torch.arange(P, device=q.device, dtype=torch.int32)
        self.ring_w[layer][:, 0, slots, :P] = w
        self.ring_len[layer][:, 0, slots] = (rows + 1).to(torch.int32)

    # -- decode: selection and placement -------------------------------------------------------
    def select(
        self,
        n: int,
        a: int,
        w: int,
        plan_misses: list[int],
        plan_rec: list[int],
        recompute_ratio: float,
        mode: str,
        stamp: int,
        t: int,
    ) -> StepSelection:
        """Choose each layer's attended tokens for a step at context n (position t), place
        the incoming ones (the new token n-1 and the misses) in slots, and fill the fixed
        buffers the layer graphs read. A spilling step runs ``SpillSelector`` (one graph
        on a GPU) and sends its host part down; ``resolve`` waits for that."""
        ring = t % self.k_hist if self.swa else 0
        if not self.identity:
            assert self.selector is not None and mode == self.selector.mode
            misses = plan_misses if mode == "plan" else [0] * self.L
            recs = plan_rec if mode == "plan" else [0] * self.L
            self.selector.set_inputs(n, w, a - w, a, stamp, ring, recompute_ratio, misses, recs)
            self.selector.run()
            return StepSelection(n, a, spills=True, dst_x=self.selector.dst_x, pos_x=self.selector.pos_x)
        # nothing ever leaves the GPU (dense, or SWA with no spill): token t sits in slot t
        L, B, dev = self.L, self.B, self.d.dev
        self.lens_buf.fill_(a)
        if self.swa and a < n:
            E, g = n - w, a - w
            win = torch.arange(E, n, device=dev).expand(L, B, w)
            glob = self.score[:, :, 0, :E].topk(g, dim=-1).indices if g > 0 else win[..., :0]
            self.sel_buf[:, :, :a].copy_(torch.cat((win, glob), dim=-1))
        elif self.swa:
            self.sel_buf[:, :, :a].copy_(torch.arange(a, device=dev).expand(L, B, a))
        self.new_buf.fill_(n - 1)
        self.new_buf.add_(self.b_ar * self.S)
        if self.swa:
            self.ring_slot.fill_(ring)
        return StepSelection(n, a)

    def resolve(self, s: StepSelection) -> None:
        """Wait for a spilling step's host part and keep views of it in ``s``."""
        if not s.spills or s.widths is not None:
            return
        assert self.selector is not None
        s.widths, rec, s.kv_rows, s.x_rows, free = self.selector.host_views()
        s.recomputed = int(rec.sum())
        s.free_misses = free / (self.L * self.B)

    # -- decode: fetching rows ---------------------------------------------------------------------

    def gather_job(
        self, sel: StepSelection, fetcher: HostFetcher, mark: Callable[[Any], Any] | None
    ) -> Callable[[int], LayerFetch]:
        """The host worker's job for this step: per layer, gather the KV rows of the misses
        fetched as KV and the x rows of those recomputed into pinned staging, and copy
        them to the GPU staging of the layer's parity. ``mark`` (traced steps only) puts
        events on the H2D stream around each layer's copies."""
        assert sel.widths is not None and sel.kv_rows is not None and sel.x_rows is not None
        B, d = self.B, self.d
        wk_l = sel.widths[:, 0].tolist()  # plain ints: no tensor ops per layer but the gathers'
        wx_l = sel.widths[:, 1].tolist() if self.keep_inputs else [0] * self.L
        kv_rows, x_rows = sel.kv_rows, sel.x_rows

        def job(l: int) -> LayerFetch:
            tj = time.perf_counter()
            p = l % 2
            out = LayerFetch()
            wk, wx = wk_l[l], wx_l[l]
            if wk == 0 and wx == 0:
                return out
            fetcher.before_gather(l)
            t0 = time.perf_counter()
            # 2-D row gathers (what calibration timed): one row per (token, sequence)
            n_rows, nx = B * wk, B * wx
            if wk:
                kv_idx = kv_rows[l, :, :wk].reshape(-1)  # sequence-major, as the landing slots
                torch.index_select(
                    self.host_kv[l].view(self.N * B, -1), 0, kv_idx, out=self.stage_kv[p][:n_rows].view(n_rows, -1)
                )
                if self.int8:
                    torch.index_select(
                        present(self.host_scale)[l].view(self.N * B, -1),
                        0,
                        kv_idx,
                        out=self.stage_sc[p][:n_rows].view(n_rows, -1),
                    )
            if wx:
                torch.index_select(
                    present(self.host_x)[l].view(self.N * B, self.h),
                    0,
                    x_rows[l, :, :wx].reshape(-1),
                    out=self.stage_x[p][:nx],
                )
            t1 = time.perf_counter()
            fetcher.before_copy(l)
            t2 = time.perf_counter()
            start = mark(d.h2d) if mark else None
            if wk:
                self.land_kv[p][:n_rows].copy_(self.stage_kv[p][:n_rows], non_blocking=True)
                out.h2d_bytes += n_rows * self.stage_kv[p][0].numel() * self.stage_kv[p].element_size()
                if self.int8:
                    self.land_sc[p][:n_rows].copy_(self.stage_sc[p][:n_rows], non_blocking=True)
                    out.h2d_bytes += n_rows * self.stage_sc[p][0].numel() * 2
            if wx:
                self.land_x[p][:nx].copy_(self.stage_x[p][:nx], non_blocking=True)
                out.h2d_bytes += nx * self.h * self.stage_x[p].element_size()
            if mark:
                out.gather_s = (t0, t1)
                out.copy_marks = (start, mark(d.h2d))
            out.host_marks = (tj, t0, t1, t2, time.perf_counter())
            out.widths = (wk, wx)
            return out

        return job

    # -- decode: the step's buffers, the new token, attention -------------------------------------
    def place_new(self, layer: int, rows16: torch.Tensor, x: torch.Tensor | None = None) -> None:
        """The new token's KV (rows [B, 1, 2, Hkv, d] fp16, as ``DecodeStep`` packs them)
        into its slot (``new_buf``) and, with write-through, into the step's D2H buffer
        with its layer input x [B, 1, h]. Graph-safe: fixed shapes and addresses."""
        rows, sc = self._format(rows16)
        self._write_slots(layer, self.new_buf[layer], rows[:, 0], sc[:, 0] if sc is not None else None)
        if self.write_through:
            self.new_all[layer].copy_(rows[:, 0])
            if sc is not None:
                present(self.new_sc_all)[layer].copy_(sc[:, 0])
            if self.keep_inputs and x is not None:
                present(self.x_all)[layer].copy_(x[:, 0])

    def _wt_parts(self) -> list[torch.Tensor]:
        return [t for t in (self.new_all, self.new_sc_all, self.x_all) if t is not None]

    def write_through_step(self, pos: int, parity: int, mark: Callable[[Any], Any]) -> tuple[int, Callable[[], None]]:
        """With write-through: the step's new rows of every layer (and inputs x) to pinned
        staging in one D2H per buffer, after the last layer has made them. Returns the D2H
        bytes and the host side, for the fetch worker: wait for the copy, then scatter the
        rows into the host copy at position pos (the next steps' gathers are queued after
        it; the token stays in SWA's window, so on the GPU, until then)."""
        if not self.write_through:
            return 0, lambda: None
        flushed = self.wt_flushed[parity]
        if not flushed.wait(timeout=60.0):
            raise RuntimeError(f"the host never stored step parity {parity}'s write-through rows")
        flushed.clear()
        staging, parts = self.wt_host[parity], self._wt_parts()
        self._d2h(list(zip(staging, parts, strict=True)))
        copied = mark(self.d.d2h) if self.d.cuda else None
        dests = [self.host_kv[:, pos]]
        if self.int8:
            dests.append(present(self.host_scale)[:, pos])
        if self.keep_inputs:
            dests.append(present(self.host_x)[:, pos])

        def flush() -> None:
            if copied is not None:
                copied.synchronize()
            for dst, src in zip(dests, staging, strict=True):
                dst.copy_(src)
            flushed.set()

        return sum(t.numel() * t.element_size() for t in parts), flush

    def attend(self, layer: int, q: torch.Tensor, scale: float, out: torch.Tensor) -> None:
        """Land the layer's fetched rows, then attention of q [B, Hq, d] over the step's
        selection into out, and (SWA) this step's weights into the layer's importance.
        Graph-safe: reads the step buffers."""
        if self.write_through:
            p, BS, BM = layer % 2, self.B * self.S, self.B * self.M
            scatter_rows(
                self.pool[layer].view(BS, -1), self.land_kv[p].view(BM, -1), self.dst_buf[layer], self.wk_buf[layer]
            )
            if self.int8:
                scatter_rows(
                    present(self.scale)[layer].view(BS, -1),
                    self.land_sc[p].view(BM, -1),
                    self.dst_buf[layer],
                    self.wk_buf[layer],
                )
        K, V, ks, vs = self.kv_views(layer)
        idx = self.sel_buf[layer][:, None, :].expand(self.B, self.Hkv, self.W)
        _, lse, scores = sparse_decode_attention(
            q, K, V, idx, self.lens_buf, scale, ks, vs, return_scores=self.swa, out=out, lengths_vary=True
        )
        if self.swa:
            assert scores is not None  # return_scores=self.swa
            importance_update(
                self.score[layer],
                self.ring_idx[layer],
                self.ring_w[layer],
                self.ring_len[layer],
                self.ring_slot,
                self.tok_buf[layer][:, None, :],
                self.lens_buf[:, :1],
                scores,
                lse,
            )

    def _d2h(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        d = self.d
        if d.cuda:
            d.d2h.wait_stream(d.compute)
            with d.on(d.d2h):
                for dst, src in parts:
                    src = src.contiguous()
                    dst.copy_(src, non_blocking=True)
                    src.record_stream(d.d2h)
        else:
            for dst, src in parts:
                dst.copy_(src)

    def host_bytes_in_use(self) -> int:
        """Bytes of host copies holding tokens so far, plus the pinned staging."""
        if not self.write_through:
            return 0
        per_tok = self.host_kv[0, 0].numel() * self.host_kv.element_size()
        if self.int8:
            per_tok += present(self.host_scale)[0, 0].numel() * 2
        if self.keep_inputs:
            per_tok += present(self.host_x)[0, 0].numel() * present(self.host_x).element_size()
        staging = sum(
            v for k, v in self.d.allocated.items() if k in ("host fetch staging", "host write-through staging")
        )
        return self.L * self.host_tokens_written * per_tok + staging
