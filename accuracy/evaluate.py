"""Teacher-forced evaluation of selection policies on one text, all policies batched.

Each batch row runs one PolicySpec; agreement is measured against row 0 (the CLI puts
dense there). The first
`prefill` tokens run dense (the prompt); then every later token is decoded one step at a
time with each row's selection. Per row: perplexity of the next token, top-1 agreement
with the dense row, and attention-mass recall (the share of this step's full-softmax
attention mass that lies on the selected tokens, mean over layers and heads).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from alisa.kernels.selection import LayerSelector, PolicySpec
from alisa.runtime.decoder import Decoder, KVCache
from alisa.sim.selection import SelectionTrace


@dataclass
class RowMetrics:
    spec: PolicySpec
    nll_sum: float = 0.0
    count: int = 0
    agree: int = 0
    recall_sum: float = 0.0
    recall_n: int = 0

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / max(1, self.count))

    @property
    def agreement(self) -> float:
        return self.agree / max(1, self.count)

    @property
    def recall(self) -> float:
        return self.recall_sum / max(1, self.recall_n)


@dataclass
class _TraceRecorder:
    row: int
    num_layers: int
    context_len: list[int] = field(default_factory=list)
    window: list[int] = field(default_factory=list)
    selected: list[list[int]] = field(default_factory=list)
    changed: list[list[int]] = field(default_factory=list)
    indices: list[np.ndarray] = field(default_factory=list)
    prev: list[torch.Tensor | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prev = [None] * self.num_layers

    def start_step(self, n: int, window: int) -> None:
        self.context_len.append(n)
        self.window.append(window)
        self.selected.append([0] * self.num_layers)
        self.changed.append([0] * self.num_layers)

    def layer(self, layer: int, mask_row: torch.Tensor, window: int) -> None:
        n = mask_row.shape[-1]
        glob = mask_row.clone()
        glob[:, n - window :] = False
        self.selected[-1][layer] = int(glob.sum())
        prev = self.prev[layer]
        if prev is not None:
            p = torch.zeros_like(glob)
            p[:, : prev.shape[-1]] = prev
            self.changed[-1][layer] = int((glob & ~p).sum())
        else:
            self.changed[-1][layer] = int(glob.sum())
        self.prev[layer] = glob
        self.indices.append(mask_row.any(0).nonzero().flatten().to(torch.int32).numpy())

    def trace(self) -> SelectionTrace:
        lens = np.array([0] + [len(i) for i in self.indices], dtype=np.int64)
        return SelectionTrace(
            np.array(self.context_len),
            np.array(self.window),
            np.array(self.selected),
            np.array(self.changed),
            np.cumsum(lens),
            np.concatenate(self.indices) if self.indices else np.zeros(0, np.int32),
        )


def masked_attention(
    dec: Decoder,
    q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    m: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode position: q [B, Hq, 1, d] over K, V [B, Hkv, n, d] restricted to mask m
    [B, Hkv, n]. Returns (output [B, Hq, 1, d], masked weights and full-softmax weights,
    both [B, Hkv, G, n])."""
    c = dec.cfg
    B, G = q.shape[0], c.num_heads // c.num_kv_heads
    qg = q.view(B, c.num_kv_heads, G, c.head_dim)  # GQA groups
    s = (qg @ K.transpose(-1, -2)) * dec.scale  # [B, Hkv, G, n]
    p = s.masked_fill(~m[:, :, None], -math.inf).softmax(-1)
    return (p @ V).view(B, c.num_heads, 1, c.head_dim), p, s.softmax(-1)


def prefill_observed(
    dec: Decoder, ids: torch.Tensor, cache: KVCache, sels: list[LayerSelector], broadcast: int | None = None
) -> torch.Tensor:
    """Dense causal prefill of ids [b, P] that fills the cache and each layer's selector
    (with `broadcast`, one row is run and copied to that many). Returns the hidden [B, P, h]."""
    c = dec.cfg
    b, P = ids.shape
    G = c.num_heads // c.num_kv_heads
    B = broadcast or b
    pos = torch.arange(P, device=ids.device)
    x = dec.embed(ids, pos)
    causal = torch.ones(P, P, dtype=torch.bool, device=ids.device).triu(1)
    for layer in range(c.num_layers):
        _, q, k, v = dec.qkv(layer, x, pos)
        cache.append(layer, k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
        qg = q.view(b, c.num_kv_heads, G, P, c.head_dim)
        s = (qg @ k[:, :, None].transpose(-1, -2)) * dec.scale  # [b, Hkv, G, P, P]
        p = s.masked_fill(causal, -math.inf).softmax(-1)
        sels[layer].observe_prefill(p.sum(2).expand(B, -1, -1, -1))
        a = (p @ v[:, :, None]).view(b, c.num_heads, P, c.head_dim)
        x = dec.finish_layer(layer, x, a)
    return x.expand(B, -1, -1)


def evaluate(
    dec: Decoder,
    ids: torch.Tensor,
    specs: list[PolicySpec],
    prefill: int,
    shared_heads: bool = False,
    trace_row: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[list[RowMetrics], SelectionTrace | None]:
    c = dec.cfg
    T = ids.numel()
    if not 1 <= prefill < T - 1:
        raise ValueError(f"prefill {prefill} must leave tokens to decode (text has {T})")
    B = len(specs)
    dtype = dec.w["embed"].dtype
    cache = KVCache(c, B, T, dtype, ids.device)
    sels = [LayerSelector(specs, c.num_kv_heads, T, shared_heads, ids.device) for _ in range(c.num_layers)]
    rows = [RowMetrics(s) for s in specs]
    rec = _TraceRecorder(trace_row, c.num_layers) if trace_row is not None else None

    with torch.no_grad():
        # prefill: dense causal, identical for every row: run it once and broadcast
        x = prefill_observed(dec, ids[:prefill][None], cache, sels, broadcast=B)

        recall_acc = torch.zeros(B, dtype=torch.float64)
        for t in range(prefill, T - 1):
            n = t + 1
            pos = torch.tensor([t], device=ids.device)
            x = dec.embed(ids[t : t + 1].expand(B, 1), pos)
            for layer in range(c.num_layers):
                _, q, k, v = dec.qkv(layer, x, pos)
                K, V = cache.append(layer, k, v)
                m = sels[layer].mask(n)  # [B, Hkv, n]
                out, p, pd = masked_attention(dec, q, K, V, m)
                recall = (pd * m[:, :, None]).sum(-1).flatten(1).mean(-1)  # [B]
                sels[layer].observe(p.sum(2))
                recall_acc += recall
                if rec is not None:
                    if layer == 0:
                        rec.start_step(n, sels[layer].window(rec.row))
                    rec.layer(layer, m[rec.row], sels[layer].window(rec.row))
                x = dec.finish_layer(layer, x, out)
            logp = dec.logits(x)[:, -1].float().log_softmax(-1)
            target = ids[t + 1]
            top = logp.argmax(-1)
            for r in range(B):
                rows[r].nll_sum -= float(logp[r, target])
                rows[r].count += 1
                rows[r].agree += int(top[r] == top[0])
            if progress:
                progress(1)
    for r in range(B):
        rows[r].recall_sum = float(recall_acc[r])
        rows[r].recall_n = (T - 1 - prefill) * c.num_layers
    return rows, (rec.trace() if rec is not None else None)
