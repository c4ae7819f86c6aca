"""FlexGen-like KV placement on a real GPU: the oldest cpu(n) tokens of every sequence
live in pinned host memory, the rest on the GPU; each step, each layer's host part
crosses PCIe whole (one contiguous copy, prefetched a layer ahead) and attention runs
over both parts, merged by their log-sum-exp.

Layout: GPU ring [L, G, B, 2, Hkv, d] (token t in slot t mod G, G = the most tokens the
GPU holds at once), host [L, N, B, 2, Hkv, d] (token-major, so a prefix is contiguous),
GPU staging [2, cpu_max, B, 2, Hkv, d] (double-buffered by layer parity).
"""

from __future__ import annotations

import torch

from alisa.kernels.swa_triton import sparse_decode_attention

from .device import Device


def token_major_views(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, B, 2, Hkv, d] -> K, V as [B, Hkv, T, d] strided views."""
    return t[:, :, 0].permute(1, 2, 0, 3), t[:, :, 1].permute(1, 2, 0, 3)


def merge_attention(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor) -> torch.Tensor:
    """Softmax attention over two disjoint key sets from each part's output and log-sum-exp."""
    m = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - m)[..., None], torch.exp(lse2 - m)[..., None]
    return ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(o1.dtype)


class PrefixCache:
    def __init__(self, device: Device, *, layers: int, batch: int, max_tokens: int, gpu_tokens: int,
                 cpu_max: int, kv_heads: int, head_dim: int) -> None:
        self.d = device
        self.L, self.B, self.N, self.G = layers, batch, max_tokens, gpu_tokens
        self.cpu_max = cpu_max
        shape = (batch, 2, kv_heads, head_dim)
        self.ring = device.alloc("GPU KV cache", (layers, gpu_tokens, *shape), torch.float16)
        if cpu_max:
            self.host = device.alloc("host KV", (layers, max_tokens, *shape), torch.float16, host=True)
            self.stage = device.alloc("GPU fetch staging", (2, cpu_max, *shape), torch.float16)
        self.row_bytes = batch * 2 * kv_heads * head_dim * 2
        self.cpu_n = 0
        self.h2d_done = [torch.cuda.Event() for _ in range(2)] if device.cuda else []
        self.consumed = [torch.cuda.Event() for _ in range(2)] if device.cuda else []
        self.marks: list[tuple[int, object, object]] = []

    def reset(self) -> None:
        self.cpu_n = 0
        self.marks.clear()

    @staticmethod
    def _rows(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """k, v [B, Hkv, T, d] -> token-major rows [T, B, 2, Hkv, d]."""
        return torch.stack((k, v), dim=1).permute(3, 0, 1, 2, 4).to(torch.float16)

    def _ring_slots(self, lo: int, hi: int) -> torch.Tensor:
        return torch.arange(lo, hi, device=self.d.dev) % self.G

    # -- prefill ---------------------------------------------------------------------------
    def prefill_layer(self, layer: int, k: torch.Tensor, v: torch.Tensor, cpu_n: int) -> int:
        P = k.shape[2]
        rows = self._rows(k, v).contiguous()
        self.ring[layer].index_copy_(0, self._ring_slots(cpu_n, P), rows[cpu_n:])
        if cpu_n:
            self._d2h(self.host[layer][:cpu_n], rows[:cpu_n])
        return cpu_n * self.row_bytes

    # -- decode -------------------------------------------------------------------------------
    def prefetch(self, layer: int, cpu_prev: int, mark) -> int:  # type: ignore[no-untyped-def]
        """Issue the H2D of the layer's host part (prefetch); returns bytes."""
        if not cpu_prev:
            return 0
        p = layer % 2
        d = self.d
        if d.cuda:
            d.h2d.wait_event(self.consumed[p])  # the compute stream is done with this buffer
            d.h2d.wait_stream(d.d2h)             # last step's spilled tokens have reached the host
            with torch.cuda.stream(d.h2d):
                s = mark(d.h2d)
                self.stage[p][:cpu_prev].copy_(self.host[layer][:cpu_prev], non_blocking=True)
                self.h2d_done[p].record(d.h2d)
                self.marks.append((layer, s, mark(d.h2d)))
        else:
            s = mark(None)
            self.stage[p][:cpu_prev].copy_(self.host[layer][:cpu_prev])
            self.marks.append((layer, s, mark(None)))
        return cpu_prev * self.row_bytes

    def step_lists(self, n: int, cpu_prev: int) -> tuple[torch.Tensor, ...]:
        """A step's index lists and lengths, the same for every layer: the GPU part (ring
        slots of tokens cpu_prev..n-1) and the fetched host part (staging rows 0..cpu_prev-1)."""
        B, Hkv = self.B, self.ring.shape[-2]
        idx = self._ring_slots(cpu_prev, n).to(torch.int32).expand(B, Hkv, n - cpu_prev)
        lens = torch.full((B, Hkv), n - cpu_prev, dtype=torch.int32, device=self.d.dev)
        if not cpu_prev:
            return idx, lens
        idx2 = torch.arange(cpu_prev, device=self.d.dev, dtype=torch.int32).expand(B, Hkv, cpu_prev)
        lens2 = torch.full((B, Hkv), cpu_prev, dtype=torch.int32, device=self.d.dev)
        return idx, lens, idx2, lens2

    def attend(self, layer: int, q: torch.Tensor, rows: torch.Tensor, n: int, cpu_prev: int, scale: float,
               lists: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        """The new token's KV rows [B, 1, 2, Hkv, d] into the ring, then attention of q
        [B, Hq, d] over all n tokens into out."""
        self.ring[layer][(n - 1) % self.G] = rows[:, 0]
        Kr, Vr = token_major_views(self.ring[layer])
        if not cpu_prev:
            sparse_decode_attention(q, Kr, Vr, lists[0], lists[1], scale, out=out)
            return
        o, lse, _ = sparse_decode_attention(q, Kr, Vr, lists[0], lists[1], scale)
        p = layer % 2
        if self.d.cuda:
            self.d.compute.wait_event(self.h2d_done[p])
        Ks, Vs = token_major_views(self.stage[p])
        o2, lse2, _ = sparse_decode_attention(q, Ks, Vs, lists[2], lists[3], scale)
        if self.d.cuda:
            self.consumed[p].record(self.d.compute)
        out.copy_(merge_attention(o, lse, o2, lse2))

    def spill(self, layer: int, lo: int, hi: int) -> int:
        """Tokens [lo, hi) move from the ring to the host (after this step's attention)."""
        if hi <= lo:
            return 0
        rows = self.ring[layer].index_select(0, self._ring_slots(lo, hi))
        self._d2h(self.host[layer][lo:hi], rows)
        return (hi - lo) * self.row_bytes

    def _d2h(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        d = self.d
        if d.cuda:
            d.d2h.wait_stream(d.compute)
            with torch.cuda.stream(d.d2h):
                dst.copy_(src, non_blocking=True)
                src.record_stream(d.d2h)
        else:
            dst.copy_(src)

    def host_bytes_in_use(self) -> int:
        return self.L * self.cpu_n * self.row_bytes
