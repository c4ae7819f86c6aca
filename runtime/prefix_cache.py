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
    def __init__(
        self,
        device: Device,
        *,
        layers: int,
        batch: int,
        max_tokens: int,
        gpu_tokens: int,
        cpu_max: int,
        kv_heads: int,
        head_dim: int,
    ) -> None:
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
        # a step's lists in fixed buffers (the same for every layer), so that the attention
        # launches can be captured once and replayed (``DecodeStep``): the new token's ring
        # slot, the ring slots of the GPU part, and the lengths of both parts
        self.Hkv = kv_heads
        self.new_slot = device.alloc("step buffers", (1,), torch.int64, fill=0)
        self.ring_idx = device.alloc("step buffers", (gpu_tokens,), torch.int32, fill=0)
        self.len_gpu = device.alloc("step buffers", (batch, kv_heads), torch.int32, fill=0)
        self.len_host = device.alloc("step buffers", (batch, kv_heads), torch.int32, fill=0)
        self.stage_idx = torch.arange(max(1, cpu_max), device=device.dev, dtype=torch.int32)
        self.part: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layers  # GPU part's (out, lse)

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
    def prefetch(self, layer: int, cpu_prev: int, mark) -> int:
        """Issue the H2D of the layer's host part (prefetch); returns bytes."""
        if not cpu_prev:
            return 0
        p = layer % 2
        d = self.d
        if d.cuda:
            d.h2d.wait_event(self.consumed[p])  # the compute stream is done with this buffer
            d.h2d.wait_stream(d.d2h)  # last step's spilled tokens have reached the host
            with d.on(d.h2d):
                s = mark(d.h2d)
                self.stage[p][:cpu_prev].copy_(self.host[layer][:cpu_prev], non_blocking=True)
                self.h2d_done[p].record(d.h2d)
                self.marks.append((layer, s, mark(d.h2d)))
        else:
            s = mark(None)
            self.stage[p][:cpu_prev].copy_(self.host[layer][:cpu_prev])
            self.marks.append((layer, s, mark(None)))
        return cpu_prev * self.row_bytes

    def stage_step(self, n: int, cpu_prev: int) -> None:
        """A step's lists into the fixed buffers: tokens cpu_prev..n-1 on the GPU (ring
        slots), 0..cpu_prev-1 fetched (staging rows 0..cpu_prev-1)."""
        self.new_slot.fill_((n - 1) % self.G)
        self.ring_idx[: n - cpu_prev].copy_(self._ring_slots(cpu_prev, n))
        self.len_gpu.fill_(n - cpu_prev)
        self.len_host.fill_(cpu_prev)

    def _idx(self, flat: torch.Tensor) -> torch.Tensor:
        return flat[None, None, :].expand(self.B, self.Hkv, flat.shape[0])

    def attend_gpu_part(self, layer: int, q: torch.Tensor, rows: torch.Tensor, scale: float, out: torch.Tensor) -> None:
        """The new token's KV rows [B, 1, 2, Hkv, d] into the ring, then attention of q
        [B, Hq, d] over the GPU part (into out when there is no host part). Graph-safe."""
        self.ring[layer].index_copy_(0, self.new_slot, rows.transpose(0, 1))
        Kr, Vr = token_major_views(self.ring[layer])
        if not self.cpu_max:
            sparse_decode_attention(
                q, Kr, Vr, self._idx(self.ring_idx), self.len_gpu, scale, out=out, lengths_vary=True
            )
            return
        o, lse, _ = sparse_decode_attention(q, Kr, Vr, self._idx(self.ring_idx), self.len_gpu, scale, lengths_vary=True)
        self.part[layer] = (o, lse)

    def wait_fetched(self, layer: int) -> None:
        """The compute stream waits for the layer's host part to land (eager, between graphs)."""
        if self.cpu_max and self.d.cuda:
            self.d.compute.wait_event(self.h2d_done[layer % 2])

    def attend_host_part(self, layer: int, q: torch.Tensor, scale: float, out: torch.Tensor) -> None:
        """Attention over the fetched host part, merged with the GPU part's into out. Graph-safe."""
        if not self.cpu_max:
            return
        Ks, Vs = token_major_views(self.stage[layer % 2])
        o2, lse2, _ = sparse_decode_attention(
            q, Ks, Vs, self._idx(self.stage_idx), self.len_host, scale, lengths_vary=True
        )
        part = self.part[layer]
        assert part is not None  # attend_gpu_part ran first, in the same graph
        o, lse = part
        out.copy_(merge_attention(o, lse, o2, lse2))

    def release(self, layer: int) -> None:
        """The layer's staging buffer may be refilled (after the step's attention over it)."""
        if self.cpu_max and self.d.cuda:
            self.consumed[layer % 2].record(self.d.compute)

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
            with d.on(d.d2h):
                dst.copy_(src, non_blocking=True)
                src.record_stream(d.d2h)
        else:
            dst.copy_(src)

    def host_bytes_in_use(self) -> int:
        return self.L * self.cpu_n * self.row_bytes
