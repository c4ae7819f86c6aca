"""The dense parts of a one-token decode step, as CUDA graphs.

Eager PyTorch issues some 40 kernels per layer for the norms, the projections, RoPE and
the MLP of one decode token, and on an H100 their host-side dispatch takes longer than
the GPU work they describe (the first validation matrix: LLaMA-7B steps of ~30 ms against
~15 ms of GPU time, flat in batch). Those parts have the same shapes at every step, so
each is captured once as a CUDA graph and replayed:

* ``begin``: token ids and position -> embedding, RoPE tables;
* ``pre(l)``: norm, fused QKV projection, RoPE, and the new token's K/V packed as cache
  rows [B, 1, 2, Hkv, d] (and a copy of the layer input, for a write-through of x),
  then the cache's ``pre_hook(l)`` (the new row into its slot; FlexGen-like: attention
  over the GPU part);
* ``post(l)``: the cache's ``attend_hook(l)`` (the Triton attention, and SWA's
  importance update, into ``o``), then output projection, residual, norm, MLP, residual;
* ``end``: final norm, LM head, greedy token.

The attention kernels read the step's token lists and lengths from fixed device buffers
that the cache fills before the step (``SlotCache.stage_step``, ``PrefixCache.stage_step``), so
their launches replay too, and so does the landing of fetched rows (a scatter that reads
its row count on the device). What stays eager between the graphs is what changes shape
or crosses streams: waiting for a layer's fetched rows and once per step the
write-through of the new tokens to the host (Phase III recompute has graphs of its own
per width, ``recompute.py``). All buffers are static: a graph reads and writes fixed
addresses, so the step's write-through copy of what the graphs made must finish before
the next step's ``pre`` graphs overwrite it (the executor's compute stream waits for the
D2H stream once per step).

``graphs=False`` runs the same bodies eagerly into the same buffers (the CPU, tests).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from .decoder import Decoder
from .device import capture_graphs
from .slot_cache import kv_rows


class DecodeStep:
    def __init__(
        self,
        dec: Decoder,
        batch: int,
        act_dtype: torch.dtype,
        device: torch.device,
        graphs: bool,
        pre_hook: Callable[[int], None] | None = None,
        attend_hook: Callable[[int], None] | None = None,
    ) -> None:
        c = dec.cfg
        self.dec, self.B = dec, batch
        self.L = c.num_layers
        self.llama = c.family == "llama"
        self.graphs = graphs and device.type == "cuda"
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.x = torch.zeros(batch, 1, c.hidden_size, dtype=act_dtype, device=device)
        self.o = torch.zeros(batch, c.num_heads, c.head_dim, dtype=torch.float16, device=device)
        self.tok = torch.zeros(batch, dtype=torch.long, device=device)
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self.q: list[torch.Tensor] = [self.o] * self.L  # [B, Hq, d] fp16, per layer
        self.rows: list[torch.Tensor] = [self.o] * self.L  # [B, 1, 2, Hkv, d] fp16
        self.pre_hook, self.attend_hook = pre_hook, attend_hook
        self._g: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}
        self.captured = False

    # -- bodies (the same code eager and captured) -------------------------------------------
    def _begin_body(self) -> None:
        x = self.dec.embed(self.ids, self.pos)
        self.x.copy_(x)
        if self.llama:
            cos, sin = self.dec.rope_tables(self.pos, self.x.dtype)
            if self.rope is None:
                self.rope = (cos.clone(), sin.clone())
            else:
                self.rope[0].copy_(cos)
                self.rope[1].copy_(sin)

    def _pre_body(self, l: int) -> None:
        _, q, k, v = self.dec.qkv(l, self.x, self.pos, self.rope)
        self.q[l] = q[:, :, 0].to(torch.float16)
        self.rows[l] = kv_rows(k, v).contiguous()
        if self.pre_hook is not None:
            self.pre_hook(l)

    def _post_body(self, l: int) -> None:
        if self.attend_hook is not None:
            self.attend_hook(l)
        self.x.copy_(self.dec.finish_layer(l, self.x, self.o[:, :, None].to(self.x.dtype)))

    def _end_body(self) -> None:
        self.tok.copy_(self.dec.logits(self.x[:, -1]).argmax(-1))

    def _bodies(self) -> list[tuple[tuple[str, int], Callable[[], None]]]:
        out: list[tuple[tuple[str, int], Callable[[], None]]] = [(("begin", 0), self._begin_body)]
        for l in range(self.L):
            out.append((("pre", l), partial(self._pre_body, l)))
            out.append((("post", l), partial(self._post_body, l)))
        out.append((("end", 0), self._end_body))
        return out

    def capture(self) -> None:
        """Capture each body into its own graph, the graphs sharing one memory pool."""
        if not self.graphs or self.captured:
            return
        self._g = capture_graphs(self.x.device, dict(self._bodies()))
        self.captured = True

    def _run(self, key: tuple[str, int], body: Callable[[], None]) -> None:
        g = self._g.get(key) if self.captured else None
        if g is not None:
            g.replay()
        else:
            body()

    # -- the step ---------------------------------------------------------------------------
    def begin(self, last_tok: torch.Tensor, position: int) -> None:
        self.ids.copy_(last_tok.view(self.B, 1))
        self.pos.fill_(position)
        self._run(("begin", 0), self._begin_body)

    def pre(self, l: int) -> None:
        self._run(("pre", l), lambda: self._pre_body(l))

    def post(self, l: int) -> None:
        self._run(("post", l), lambda: self._post_body(l))

    def end(self) -> torch.Tensor:
        """The step's greedy token ids [B] (a copy: the static buffer is reused)."""
        self._run(("end", 0), self._end_body)
        return self.tok.clone()
