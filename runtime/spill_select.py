"""SWA's selection and slot placement for a spilling ALISA step, in fixed shapes, so that
on a GPU the whole of it is one CUDA graph.

Issued eagerly, a step's selection is some hundred small torch calls: 2.6 ms of host time
per LLaMA-7B step on the H100 host (a step profile probe, since removed; see git history), the largest
host cost of a step and on its critical path (the gathers need its result). Here every
tensor has the run's widest shape instead of the step's:

* tokens: all N positions, the ones the step may not pick (the window and later) masked;
* the global part and the misses: K = the largest g = a - w of the run (misses are part
  of the global part), entries past the step's count invalid;
* the attended list: A = the largest a of the run (the attention kernels read the step's
  length from ``lens_buf``).

What varies per step (n, w, g, a, the importance ring slot, the stamp, the plan's
misses and recomputes per layer, the recompute ratio) is read from one device buffer
(``inp``) that the host fills with one copy. The body also fills the fixed buffers the
layer graphs read (``SlotCache.stage_step``'s job for the eager path) and packs the
host's part (rows per layer, host row ids of the gathers) into one int32 buffer for one
D2H. On the CPU (tests) the same body runs eagerly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .device import capture_graphs

if TYPE_CHECKING:
    from .slot_cache import SlotCache

NEG_INF = float("-inf")
I64_MAX = torch.iinfo(torch.int64).max
N_SCALARS = 7  # n, w, g, a, stamp, ring slot, recompute ratio x 1e9


class SpillSelector:
    def __init__(self, cache: SlotCache, mode: str, g_max: int) -> None:
        c = cache
        dev = c.d.dev
        self.c, self.mode = c, mode
        L, B = c.L, c.B
        self.K = max(1, g_max)
        self.inp = torch.zeros(N_SCALARS + 2 * L, dtype=torch.int64, device=dev)
        self.inp_host = torch.zeros(N_SCALARS + 2 * L, dtype=torch.int64, pin_memory=c.d.cuda)
        self.pos = torch.arange(c.N, device=dev)
        self.jk = torch.arange(self.K, device=dev)
        self.jv = torch.arange(self.K + 1, device=dev)
        self.ja = torch.arange(c.W, device=dev)
        K = self.K
        self.host_ints = 2 * L + L * B + 2 * L * B * K + 1
        self.out = torch.zeros(self.host_ints, dtype=torch.int32, device=dev)
        self.out_host = c.d.alloc("host selection staging", (self.host_ints,), torch.int32, host=True)
        self.ready = torch.cuda.Event() if c.d.cuda else None
        # landing slots and positions of the step's recomputed rows, read by the recompute
        self.dst_x = torch.zeros(L, B, K, dtype=torch.int64, device=dev)
        self.pos_x = torch.zeros(L, B, K, dtype=torch.int64, device=dev)
        self.rec_width = torch.zeros(L, dtype=torch.int64, device=dev)  # recomputed rows per sequence, per layer
        # host rows (token * B + b) of the misses fetched as KV and as x, for the device gather
        self.kv_rows_dev = torch.zeros(L, B, K, dtype=torch.int64, device=dev)
        self.x_rows_dev = torch.zeros(L, B, K, dtype=torch.int64, device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None

    # -- the host side ---------------------------------------------------------------------
    def set_inputs(
        self, n: int, w: int, g: int, a: int, stamp: int, ring: int, ratio: float, misses: list[int], recs: list[int]
    ) -> None:
        """The step's scalars into the input buffer: through pinned memory, without waiting
        for the GPU (the previous step's copy has been read: its resolve came first)."""
        vals = [n, w, g, a, stamp, ring, round(ratio * 1e9), *misses, *recs]
        self.inp_host.copy_(torch.tensor(vals, dtype=torch.int64))
        self.inp.copy_(self.inp_host, non_blocking=self.c.d.cuda)

    def run(self) -> None:
        """The selection, placement and staging of the step set by ``set_inputs``; then the
        host part goes down, and ``ready`` marks its arrival."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.body()
        self.out_host.copy_(self.out, non_blocking=self.c.d.cuda)
        if self.ready is not None:
            self.ready.record(self.c.d.compute)

    def capture(self) -> None:
        """Capture ``body`` as a graph. Warm-up runs place a token, so the cache is reset
        afterwards (this runs before the prefill)."""
        c = self.c
        if not c.d.cuda or self.graph is not None:
            return
        self.set_inputs(1, 1, 0, 1, 0, 0, 0.0, [0] * c.L, [0] * c.L)  # a valid, empty step
        self.graph = capture_graphs(c.d.dev, {"select": self.body}, shared_pool=False)["select"]
        c.reset()

    # -- the device side (graph-safe: fixed shapes, no host reads) --------------------------
    def body(self) -> None:
        c, K = self.c, self.K
        L, B, N, C = c.L, c.B, c.N, c.C
        x = self.inp
        n, w, g, a, stamp, ring = x[0], x[1], x[2], x[3], x[4], x[5]
        m, r = x[N_SCALARS : N_SCALARS + L], x[N_SCALARS + L :]
        E = n - w
        early = (self.pos < E).expand(L, B, N)  # tokens the global part may pick
        sc = c.score[:, :, 0, :]
        tok_slot = c.tok_slot[:, :, :N]
        res = tok_slot >= 0
        jk = self.jk
        in_g = jk < g
        if self.mode == "free":
            top = sc.masked_fill(~early, NEG_INF).topk(K, dim=-1).indices
            miss = (tok_slot.gather(-1, top) < 0) & in_g
            cnt = miss.sum(-1)
            order = torch.sort(miss.to(torch.int8), dim=-1, descending=True, stable=True).indices
            glob = top.gather(-1, order)  # misses first, then hits, then padding
            miss_tok = glob
            ratio = x[6].double() * 1e-9
            rec = torch.round(cnt.double() * ratio).long()
            free = cnt.sum()
        else:
            # the plan's count of misses: the top non-resident tokens, the rest resident
            cnt = torch.minimum(m[:, None], (~res & early).sum(-1))
            top_nr = sc.masked_fill(res | ~early, NEG_INF).topk(K, dim=-1).indices
            top_r = sc.masked_fill(~res | ~early, NEG_INF).topk(K, dim=-1).indices
            cand = torch.cat((top_nr, top_r), dim=-1)
            valid = torch.cat((jk < cnt[..., None], jk < (g - cnt)[..., None]), dim=-1)
            order = torch.sort(valid.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :K]
            glob = cand.gather(-1, order)
            miss_tok = top_nr
            rec = torch.minimum(r[:, None], cnt)
            free_top = sc.masked_fill(~early, NEG_INF).topk(K, dim=-1).indices  # what pure SWA would miss
            free = ((tok_slot.gather(-1, free_top) < 0) & in_g).sum()
        # the attended list: the window E..n-1, then the global part; padding is token N
        ja = self.ja
        from_glob = glob.gather(-1, (ja - w).clamp(0, K - 1).expand(L, B, -1))
        sel_tok = torch.where(ja < w, E + ja, from_glob)
        sel_tok = torch.where(ja < a, sel_tok, N)
        # -- placement: the new token and the misses take the least recently used unselected slots
        inc = torch.cat(((n - 1).expand(L, B, 1), miss_tok), dim=-1)
        valid = self.jv < (cnt + 1)[..., None]
        key = c.last_used.clone()
        before = c.tok_slot.gather(-1, sel_tok)  # -1 if not resident (or padding)
        key.scatter_(-1, torch.where(before >= 0, before, C), I64_MAX)
        key[..., C] = I64_MAX
        vict = key.topk(K + 1, dim=-1, largest=False).indices
        vict = torch.where(valid, vict, C)
        inc_v = torch.where(valid, inc, N)
        old = c.slot_tok.gather(-1, vict)
        c.tok_slot.scatter_(-1, torch.where(old >= 0, old, N), -1)
        c.slot_tok.scatter_(-1, vict, inc_v)
        c.tok_slot.scatter_(-1, inc_v, vict)
        c.slot_tok[..., C] = -2
        c.tok_slot[..., N] = -1
        sel_slot = c.tok_slot.gather(-1, sel_tok)
        sel_slot = torch.where(sel_slot >= 0, sel_slot, C)  # padding reads the trash slot
        c.last_used.scatter_(-1, sel_slot, stamp.expand(L, B, sel_slot.shape[-1]))
        c.last_used[..., C] = -1
        new_slot = vict[..., 0]
        miss_slot = torch.where(valid[..., 1:], vict[..., 1:], C)
        # -- the step's fixed buffers for the layer graphs
        base = c.b_ar[None, :, None] * c.S
        c.lens_buf.copy_(a.to(torch.int32).expand_as(c.lens_buf))
        c.sel_buf.copy_(sel_slot.to(torch.int32))
        c.tok_buf.copy_(sel_tok.to(torch.int32))
        c.new_buf.copy_(new_slot + c.b_ar * c.S)
        c.ring_slot.copy_(ring.to(torch.int32).reshape(1))
        nk = cnt - rec
        c.wk_buf.copy_(nk.amax(dim=1, keepdim=True))
        # the first rec misses are recomputed from x, the next cnt - rec fetched as KV
        ok_k = jk < nk[..., None]
        src_k = (rec[..., None] + jk).clamp(max=K - 1)
        c.dst_buf[:, :, :K].copy_(torch.where(ok_k, miss_slot.gather(-1, src_k), C) + base)
        kv_rows = torch.where(ok_k, miss_tok.gather(-1, src_k) * B + c.b_ar[None, :, None], 0)
        ok_x = jk < rec[..., None]
        self.dst_x.copy_(torch.where(ok_x, miss_slot, C) + base)
        self.pos_x.copy_(miss_tok.clamp(max=N - 1))
        x_rows = torch.where(ok_x, miss_tok * B + c.b_ar[None, :, None], 0)
        self.kv_rows_dev.copy_(kv_rows)
        self.x_rows_dev.copy_(x_rows)
        widths = torch.stack((nk.amax(-1), rec.amax(-1)), -1)
        self.rec_width.copy_(widths[:, 1])
        self.out.copy_(
            torch.cat((widths.flatten(), rec.flatten(), kv_rows.flatten(), x_rows.flatten(), free.reshape(1))).to(
                torch.int32
            )
        )

    # -- reading the host part ------------------------------------------------------------
    def host_views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Wait for the host part, then (widths [L, 2], rec [L, B], kv_rows [L, B, K],
        x_rows [L, B, K], misses pure SWA would have had, summed): views of pinned memory,
        valid until the next step's ``run``."""
        if self.ready is not None:
            self.ready.synchronize()
        c, K = self.c, self.K
        L, B = c.L, c.B
        b = self.out_host
        o = 2 * L
        widths = b[:o].view(L, 2)
        rec = b[o : o + L * B].view(L, B)
        o += L * B
        kv_rows = b[o : o + L * B * K].view(L, B, K)
        o += L * B * K
        x_rows = b[o : o + L * B * K].view(L, B, K)
        return widths, rec, kv_rows, x_rows, int(b[o + L * B * K])
