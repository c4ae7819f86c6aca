"""Greedy generation with a selection policy: the torch reference the real backend is
checked against (dense masked softmax in the decoder's dtype, ``LayerSelector`` for the
selection), independent of the Triton kernels and of where KV lives."""

from __future__ import annotations

import torch

from alisa.kernels.selection import LayerSelector, PolicySpec
from alisa.runtime.decoder import Decoder, KVCache

from .evaluate import masked_attention, prefill_observed


def reference_generate(
    dec: Decoder, prompt: torch.Tensor, steps: int, spec: PolicySpec, shared_heads: bool = True
) -> torch.Tensor:
    """Greedy tokens [B, steps] after prompt [B, P] (the first comes from the prefill)."""
    c = dec.cfg
    B, P = prompt.shape
    N = P + steps
    cache = KVCache(c, B, N, dec.w["embed"].dtype, prompt.device)
    sels = [LayerSelector([spec] * B, c.num_kv_heads, N, shared_heads, prompt.device) for _ in range(c.num_layers)]
    out = []
    with torch.no_grad():
        x = prefill_observed(dec, prompt, cache, sels)
        tok = dec.logits(x[:, -1:])[:, -1].argmax(-1)
        out.append(tok)
        for t in range(P, N - 1):
            pos = torch.tensor([t], device=prompt.device)
            x = dec.embed(tok[:, None], pos)
            for layer in range(c.num_layers):
                _, q, k, v = dec.qkv(layer, x, pos)
                K, V = cache.append(layer, k, v)
                m = sels[layer].mask(t + 1)
                o, p, _ = masked_attention(dec, q, K, V, m)
                sels[layer].observe(p.sum(2))
                x = dec.finish_layer(layer, x, o)
            tok = dec.logits(x)[:, -1].argmax(-1)
            out.append(tok)
    return torch.stack(out, dim=1)
