"""Torch references for the SWA kernels: plain, readable, used by the tests and as the
CPU fallback. Shapes follow the Triton wrappers in ``swa_triton``.

* q            [B, Hq, D]
* k, v         [B, Hkv, N, D] (fp16/bf16, or int8 with scales [B, Hkv, N])
* indices      [B, Hkv, I] int (token positions; entries past ``lengths`` are ignored)
* lengths      [B, Hkv] int (ragged index lists; 0 is allowed)
"""

from __future__ import annotations

import math

import torch


def quantize_kv_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 per row (last dim): scale = max|x| / 127 (1 where the row is zero)."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(torch.float16)
    r = xf / scale.float()[..., None]
    q = torch.clamp(torch.sign(r) * torch.floor(r.abs() + 0.5), -127, 127).to(torch.int8)  # half away from 0
    return q, scale


def dequantize_kv_ref(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[..., None]


def sparse_decode_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    lengths: torch.Tensor,
    sm_scale: float | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (out [B,Hq,D], lse [B,Hq], weights [B,Hq,I]) computed in `dtype`.

    weights[b, h, i] is the softmax probability of indices[b, h // G, i]; 0 past the length.
    An empty index list gives out = 0, lse = -inf.
    """
    B, Hq, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    I = indices.shape[-1]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)
    kf = dequantize_kv_ref(k, k_scale) if k_scale is not None else k
    vf = dequantize_kv_ref(v, v_scale) if v_scale is not None else v
    kf, vf, qf = kf.to(dtype), vf.to(dtype), q.to(dtype)
    out = torch.zeros(B, Hq, D, dtype=dtype)
    lse = torch.full((B, Hq), -math.inf, dtype=dtype)
    weights = torch.zeros(B, Hq, I, dtype=dtype)
    for b in range(B):
        for hk in range(Hkv):
            n = int(lengths[b, hk])
            if n == 0:
                continue
            idx = indices[b, hk, :n].long()
            ks, vs = kf[b, hk, idx], vf[b, hk, idx]  # [n, D]
            qs = qf[b, hk * G : (hk + 1) * G]  # [G, D]
            s = (qs @ ks.T) * scale  # [G, n]
            l = torch.logsumexp(s, dim=-1)
            p = torch.exp(s - l[:, None])
            out[b, hk * G : (hk + 1) * G] = p @ vs
            lse[b, hk * G : (hk + 1) * G] = l
            weights[b, hk * G : (hk + 1) * G, :n] = p
    return out, lse, weights


def importance_update_ref(
    score: torch.Tensor,
    ring_idx: torch.Tensor,
    ring_w: torch.Tensor,
    ring_len: torch.Tensor,
    slot: int,
    indices: torch.Tensor,
    lengths: torch.Tensor,
    weights: torch.Tensor,
) -> None:
    """SWA importance over the last k steps, in place.

    score [B, Hkv, N]: per token, the attention weight it received (summed over the KV
    head's query heads) over the last k steps. The ring (k slots of [B, Hkv, I]) holds
    each step's (indices, weights); the step leaving the window is subtracted, this one
    added and stored in `slot`.
    """
    B, Hkv, _ = score.shape
    G = weights.shape[1] // Hkv
    for b in range(B):
        for hk in range(Hkv):
            n_old = int(ring_len[b, hk, slot])
            if n_old:
                score[b, hk].index_add_(0, ring_idx[b, hk, slot, :n_old].long(), -ring_w[b, hk, slot, :n_old])
            n = int(lengths[b, hk])
            w = weights[b, hk * G : (hk + 1) * G, :n].sum(0).to(score.dtype)
            if n:
                score[b, hk].index_add_(0, indices[b, hk, :n].long(), w)
            ring_idx[b, hk, slot, :n] = indices[b, hk, :n].to(ring_idx.dtype)
            ring_w[b, hk, slot, :n] = w.to(ring_w.dtype)
            ring_len[b, hk, slot] = n


def scatter_rows_ref(dst: torch.Tensor, src: torch.Tensor, dst_idx: torch.Tensor, width: int) -> None:
    """dst[dst_idx[b, i]] = src[b * width + i] for i < width, row by row, in place."""
    for b in range(dst_idx.shape[0]):
        for i in range(width):
            dst[int(dst_idx[b, i])] = src[b * width + i]


def gather_rows_ref(
    dst: torch.Tensor, src: torch.Tensor, src_idx: torch.Tensor, width: int, dst_idx: torch.Tensor | None = None
) -> None:
    """dst[b * width + i] (or dst[dst_idx[b, i]]) = src[src_idx[b, i]] for i < width, row by row."""
    for b in range(src_idx.shape[0]):
        for i in range(width):
            d = b * width + i if dst_idx is None else int(dst_idx[b, i])
            dst[d] = src[int(src_idx[b, i])]
