"""Triton kernels for SWA decoding.

1. ``sparse_decode_attention``: each (sequence, KV head) program block serves the query
   heads of its GQA group against the KV rows named by a ragged index list; the list is
   split over several programs (flash-decoding) and a second kernel combines the splits.
   fp16/bf16 inputs, fp32 accumulation; K/V may be INT8 with per-row scales, dequantised
   in registers. Optionally writes the raw scores and returns the log-sum-exp, from which
   the attention weights follow without a second pass over K.
2. ``importance_update``: SWA's per-token importance (attention weight summed over the
   group's query heads and over the last k steps) kept in a score buffer on the device,
   with a ring of the last k steps' (indices, weights) so the oldest step can be
   subtracted; no host round trip.
3. ``quantize_kv``: INT8 per row (token and head) with an fp16 scale, on write.

On a machine without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1),
which is how CI tests them.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------------------
# 1. sparse decode attention
# ---------------------------------------------------------------------------


@triton.jit
def _sparse_decode_split(
    Q,
    K,
    V,
    KS,
    VS,
    IDX,
    LEN,
    O_PART,
    LSE_PART,
    S_OUT,
    sqb,
    sqh,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sksb,
    sksh,
    sksn,
    svsb,
    svsh,
    svsn,
    sib,
    sih,
    sin,
    slb,
    slh,
    sob,
    soh,
    sos,
    sod,
    smb,
    smh,
    sms,
    ssb,
    ssh,
    ssn,
    sm_scale,
    Hkv,
    chunk,
    G: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    D: tl.constexpr,
    INT8: tl.constexpr,
    WRITE_SCORES: tl.constexpr,
    DOT_F32: tl.constexpr,
    CHUNK_FROM_LEN: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # int64: b * stride overflows int32 past 2^31 elements
    split = tl.program_id(1)
    b = pid // Hkv
    hk = pid % Hkv
    n_idx = tl.load(LEN + b * slb + hk * slh)
    if CHUNK_FROM_LEN:
        # lengths known only on the device (a replayed CUDA graph): split this list's
        # actual length evenly over the grid's splits, not the index buffer's width
        chunk = tl.cdiv(tl.cdiv(n_idx, tl.num_programs(1)), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, n_idx)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    mask_g = offs_g < G
    mask_d = offs_d < D
    heads = hk * G + offs_g
    q = tl.load(
        Q + b * sqb + heads[:, None] * sqh + offs_d[None, :] * sqd, mask=mask_g[:, None] & mask_d[None, :], other=0.0
    )
    if DOT_F32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)

    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        tok = tl.load(IDX + b * sib + hk * sih + offs_n * sin, mask=mask_n, other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + b * skb + hk * skh + tok[:, None] * skn + offs_d[None, :] * skd, mask=kv_mask, other=0)
        v = tl.load(V + b * svb + hk * svh + tok[:, None] * svn + offs_d[None, :] * svd, mask=kv_mask, other=0)
        if INT8:
            # int8 -> fp16 is exact; per-row scales multiply the scores (K) and the
            # probabilities (V) instead of every element: fewer ALU ops per byte read
            ks = tl.load(KS + b * sksb + hk * sksh + tok * sksn, mask=mask_n, other=0.0).to(tl.float32)
            vs = tl.load(VS + b * svsb + hk * svsh + tok * svsn, mask=mask_n, other=0.0).to(tl.float32)
            k = k.to(q.dtype)
            v = v.to(q.dtype)
        elif DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * sm_scale
        if INT8:
            s = s * ks[None, :]
        s = tl.where(mask_n[None, :], s, float("-inf"))
        if WRITE_SCORES:
            tl.store(
                S_OUT + b * ssb + heads[:, None] * ssh + offs_n[None, :] * ssn,
                s,
                mask=mask_g[:, None] & mask_n[None, :],
            )
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if INT8:
            p = p * vs[None, :]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    has = l_i > 0
    out = tl.where(has[:, None], acc / tl.where(has, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    tl.store(
        O_PART + b * sob + heads[:, None] * soh + split * sos + offs_d[None, :] * sod,
        out,
        mask=mask_g[:, None] & mask_d[None, :],
    )
    tl.store(LSE_PART + b * smb + heads * smh + split * sms, lse, mask=mask_g)


@triton.jit
def _combine_splits(
    O_PART,
    LSE_PART,
    O,
    LSE,
    sob,
    soh,
    sos,
    sod,
    smb,
    smh,
    sms,
    s_ob,
    s_oh,
    s_od,
    s_lb,
    s_lh,
    Hq,
    n_splits,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // Hq
    h = pid % Hq
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < n_splits
    mask_d = offs_d < D
    lse = tl.load(LSE_PART + b * smb + h * smh + offs_s * sms, mask=mask_s, other=float("-inf"))
    m = tl.max(lse, 0)
    finite = m > float("-inf")
    m_safe = tl.where(finite, m, 0.0)
    w = tl.where(lse > float("-inf"), tl.exp(lse - m_safe), 0.0)
    total = tl.sum(w, 0)
    o = tl.load(
        O_PART + b * sob + h * soh + offs_s[:, None] * sos + offs_d[None, :] * sod,
        mask=mask_s[:, None] & mask_d[None, :],
        other=0.0,
    )
    out = tl.sum(o * w[:, None], 0) / tl.where(finite, total, 1.0)
    out = tl.where(finite, out, 0.0)
    tl.store(O + b * s_ob + h * s_oh + offs_d * s_od, out.to(O.dtype.element_ty), mask=mask_d)
    tl.store(LSE + b * s_lb + h * s_lh, tl.where(finite, m_safe + tl.log(tl.where(finite, total, 1.0)), float("-inf")))


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_splits(batch_heads: int, max_len: int, block_n: int, device: torch.device) -> int:
    """Enough programs to fill the GPU (about two per SM), never a split without work."""
    if device.type == "cuda":
        target = 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        target = 4
    want = max(1, math.ceil(target / max(1, batch_heads)))
    return max(1, min(want, math.ceil(max(1, max_len) / block_n), 64))


def _split_plan(
    batch_heads: int, max_len: int, block_n: int, device: torch.device, num_splits: int | None = None
) -> tuple[int, int]:
    """(splits, tokens per split) for an index list of max_len."""
    S = num_splits or _num_splits(batch_heads, max_len, block_n, device)
    chunk = max(block_n, math.ceil(max(1, max_len) / S / block_n) * block_n)
    return max(1, math.ceil(max(1, max_len) / chunk)), chunk


def combine_block(batch_heads: int, max_len: int, device: torch.device, block_n: int = 64) -> int:
    """The combine kernel's compile-time block for an index list of max_len (the split
    count rounded up to a power of two): each distinct value is one Triton compile."""
    S, _ = _split_plan(batch_heads, max_len, block_n, device)
    return max(2, triton.next_power_of_2(S))


def sparse_decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    lengths: torch.Tensor,
    sm_scale: float | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    return_scores: bool = False,
    num_splits: int | None = None,
    block_n: int = 64,
    out: torch.Tensor | None = None,
    num_stages: int = 3,
    lengths_vary: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Attention of q over the KV rows named by `indices` (see module and reference docs).

    Returns (out [B,Hq,D] in q's dtype, lse [B,Hq] fp32, scores [B,Hq,I] fp32 or None).
    With int8 K/V, pass their per-row scales. Scores past a list's length are unspecified.
    `out` (optional, [B,Hq,D] in q's dtype) receives the result in place.
    num_stages: Triton's software-pipelining depth for the gather loop (benchmarks/kernels.py
    compares settings; 1 turns pipelining off).
    lengths_vary: the lengths may be far below the index width and change between calls
    without the host knowing (a CUDA graph replayed over growing lists in fixed buffers):
    the grid is sized for the width, and each list's length is split evenly over it on
    the device.
    """
    B, Hq, D = q.shape
    Hkv = k.shape[1]
    if Hq % Hkv:
        raise ValueError(f"query heads {Hq} not a multiple of KV heads {Hkv}")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"q must be fp16 or bf16, got {q.dtype}")
    int8 = k.dtype == torch.int8
    if int8 and (k_scale is None or v_scale is None):
        raise ValueError("int8 K/V need k_scale and v_scale")
    G = Hq // Hkv
    I = indices.shape[-1]
    lengths = lengths.to(torch.int32)
    max_len = I
    S, chunk = _split_plan(B * Hkv, max_len, block_n, q.device, num_splits)
    f32 = torch.float32
    o_part = torch.empty(B, Hq, S, D, device=q.device, dtype=f32)
    lse_part = torch.empty(B, Hq, S, device=q.device, dtype=f32)
    scores = torch.empty(B, Hq, max(I, 1), device=q.device, dtype=f32) if return_scores else o_part
    ks = k_scale if k_scale is not None and int8 else lengths  # placeholders when unused: never read
    vs = v_scale if v_scale is not None and int8 else lengths
    ks_strides = ks.stride() if int8 else (0, 0, 0)
    vs_strides = vs.stride() if int8 else (0, 0, 0)
    BLOCK_D = triton.next_power_of_2(D)
    BLOCK_G = max(16, triton.next_power_of_2(G))
    dot_f32 = INTERPRET and q.dtype == torch.bfloat16  # the interpreter has no bf16 dot
    _sparse_decode_split[(B * Hkv, S)](
        q,
        k,
        v,
        ks,
        vs,
        indices,
        lengths,
        o_part,
        lse_part,
        scores,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *ks_strides,
        *vs_strides,
        *indices.stride(),
        *lengths.stride(),
        *o_part.stride(),
        *lse_part.stride(),
        *(scores.stride() if return_scores else (0, 0, 0)),
        sm_scale if sm_scale is not None else 1.0 / math.sqrt(D),
        Hkv,
        chunk,
        G=G,
        BLOCK_G=BLOCK_G,
        BLOCK_N=block_n,
        BLOCK_D=BLOCK_D,
        D=D,
        INT8=int8,
        WRITE_SCORES=return_scores,
        DOT_F32=dot_f32,
        CHUNK_FROM_LEN=lengths_vary,
        num_warps=4,
        num_stages=num_stages,
    )
    if out is None:
        out = torch.empty(B, Hq, D, device=q.device, dtype=q.dtype)
    lse = torch.empty(B, Hq, device=q.device, dtype=f32)
    _combine_splits[(B * Hq,)](
        o_part,
        lse_part,
        out,
        lse,
        *o_part.stride(),
        *lse_part.stride(),
        *out.stride(),
        *lse.stride(),
        Hq,
        S,
        BLOCK_S=max(2, triton.next_power_of_2(S)),
        BLOCK_D=BLOCK_D,
        D=D,
        num_warps=2,
    )
    return out, lse, (scores[..., :I] if return_scores else None)


def attention_weights(scores: torch.Tensor, lse: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Softmax weights [B,Hq,I] from the kernel's scores and lse (0 past each list's length)."""
    _, Hq, I = scores.shape
    G = Hq // lengths.shape[1]
    ln = lengths.repeat_interleave(G, dim=1)
    valid = torch.arange(I, device=scores.device)[None, None, :] < ln[..., None]
    return torch.where(valid, torch.exp(scores - lse[..., None]), torch.zeros((), device=scores.device))


# ---------------------------------------------------------------------------
# 2. importance scores
# ---------------------------------------------------------------------------


@triton.jit
def _importance_update(
    S_IN,
    LSE,
    IDX,
    LEN,
    SCORE,
    RING_IDX,
    RING_W,
    RING_LEN,
    slot,
    s_sb,
    s_sh,
    s_sn,
    s_lb,
    s_lh,
    sib,
    sih,
    sin,
    slb,
    slh,
    scb,
    sch,
    scn,
    srb,
    srh,
    srs,
    srn,
    swb,
    swh,
    sws,
    swn,
    srlb,
    srlh,
    srls,
    Hkv,
    G: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SLOT_ON_DEVICE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // Hkv
    hk = pid % Hkv
    if SLOT_ON_DEVICE:
        slot = tl.load(slot)
    # the step leaving the k-step window gives back what it added
    n_old = tl.load(RING_LEN + b * srlb + hk * srlh + slot * srls)
    for n0 in range(0, n_old, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        mask = offs < n_old
        tok = tl.load(RING_IDX + b * srb + hk * srh + slot * srs + offs * srn, mask=mask, other=0).to(tl.int64)
        w = tl.load(RING_W + b * swb + hk * swh + slot * sws + offs * swn, mask=mask, other=0.0)
        tl.atomic_add(SCORE + b * scb + hk * sch + tok * scn, -w, mask=mask)
    tl.debug_barrier()  # the slot is read in full before it is overwritten below
    n = tl.load(LEN + b * slb + hk * slh)
    offs_g = tl.arange(0, BLOCK_G)
    mask_g = offs_g < G
    heads = hk * G + offs_g
    lse = tl.load(LSE + b * s_lb + heads * s_lh, mask=mask_g, other=0.0)
    for n0 in range(0, n, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        mask = offs < n
        s = tl.load(
            S_IN + b * s_sb + heads[:, None] * s_sh + offs[None, :] * s_sn,
            mask=mask_g[:, None] & mask[None, :],
            other=float("-inf"),
        )
        p = tl.where(mask_g[:, None] & mask[None, :], tl.exp(s - lse[:, None]), 0.0)
        w = tl.sum(p, 0)
        tok = tl.load(IDX + b * sib + hk * sih + offs * sin, mask=mask, other=0)
        tl.atomic_add(SCORE + b * scb + hk * sch + tok.to(tl.int64) * scn, w, mask=mask)
        tl.store(RING_IDX + b * srb + hk * srh + slot * srs + offs * srn, tok.to(RING_IDX.dtype.element_ty), mask=mask)
        tl.store(RING_W + b * swb + hk * swh + slot * sws + offs * swn, w, mask=mask)
    tl.store(RING_LEN + b * srlb + hk * srlh + slot * srls, n)


def importance_update(
    score: torch.Tensor,
    ring_idx: torch.Tensor,
    ring_w: torch.Tensor,
    ring_len: torch.Tensor,
    slot: int | torch.Tensor,
    indices: torch.Tensor,
    lengths: torch.Tensor,
    scores: torch.Tensor,
    lse: torch.Tensor,
    block_n: int = 128,
) -> None:
    """In place: score[b, hk, t] = weight token t received over the last k steps (k = ring slots).

    slot: this step's ring slot, an int or a one-element int32 device tensor (read on the
    device, so a captured CUDA graph can be replayed step after step).

    `scores`/`lse` are what ``sparse_decode_attention(..., return_scores=True)`` returned.
    score and ring_w are fp32; ring_idx int32; ring_len int32 [B, Hkv, k].
    """
    B, Hkv, _ = score.shape
    Hq = scores.shape[1]
    G = Hq // Hkv
    lengths = lengths.to(torch.int32)
    _importance_update[(B * Hkv,)](
        scores,
        lse,
        indices,
        lengths,
        score,
        ring_idx,
        ring_w,
        ring_len,
        slot,
        *scores.stride(),
        *lse.stride(),
        *indices.stride(),
        *lengths.stride(),
        *score.stride(),
        *ring_idx.stride(),
        *ring_w.stride(),
        *ring_len.stride(),
        Hkv,
        G=G,
        BLOCK_G=max(2, triton.next_power_of_2(G)),
        BLOCK_N=block_n,
        SLOT_ON_DEVICE=isinstance(slot, torch.Tensor),
        num_warps=4,
    )


# ---------------------------------------------------------------------------
# 3. INT8 KV quantisation on write
# ---------------------------------------------------------------------------


@triton.jit
def _quantize_rows(
    X, QOUT, SCALE, n_rows, sxr, sxd, sqr, sqd, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows < n_rows)[:, None] & (offs_d < D)[None, :]
    x = tl.load(X + rows[:, None].to(tl.int64) * sxr + offs_d[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), 1)
    scale = tl.where(amax > 0, amax / 127.0, 1.0)
    scale = scale.to(tl.float16).to(tl.float32)  # quantise with the scale as it will be stored
    qv = x / scale[:, None]
    qv = tl.where(qv >= 0, tl.floor(qv + 0.5), tl.ceil(qv - 0.5))  # round half away from zero
    qv = tl.minimum(tl.maximum(qv, -127.0), 127.0)
    tl.store(QOUT + rows[:, None].to(tl.int64) * sqr + offs_d[None, :] * sqd, qv.to(tl.int8), mask=mask)
    tl.store(SCALE + rows, scale.to(tl.float16), mask=rows < n_rows)


def quantize_kv(x: torch.Tensor, block_r: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """INT8 per row of the last dim with an fp16 scale: (q like x in int8, scale x.shape[:-1])."""
    D = x.shape[-1]
    rows = x.reshape(-1, D)
    q = torch.empty(rows.shape, device=x.device, dtype=torch.int8)
    scale = torch.empty(rows.shape[0], device=x.device, dtype=torch.float16)
    n = rows.shape[0]
    if n:
        _quantize_rows[(triton.cdiv(n, block_r),)](
            rows, q, scale, n, *rows.stride(), *q.stride(), BLOCK_R=block_r, BLOCK_D=triton.next_power_of_2(D), D=D
        )
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])


# ---------------------------------------------------------------------------
# 4. landing fetched rows in their slots, with the count read on the device
# ---------------------------------------------------------------------------


@triton.jit
def _scatter_rows(SRC, DST, DST_IDX, WIDTH, sdr, sib, R, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1)
    width = tl.load(WIDTH)
    if i < width:
        src = SRC + (b * width + i) * sdr
        dst = DST + tl.load(DST_IDX + b * sib + i) * sdr
        for r0 in range(0, R, BLOCK):
            offs = r0 + tl.arange(0, BLOCK)
            m = offs < R
            tl.store(dst + offs, tl.load(src + offs, mask=m), mask=m)


def scatter_rows(
    dst: torch.Tensor, src: torch.Tensor, dst_idx: torch.Tensor, width: torch.Tensor, block: int = 1024
) -> None:
    """dst[dst_idx[b, i]] = src[b * width + i] for i < width, every b (rows of the last
    dims). ``width`` is a one-element int32 device tensor, so the launch (grid sized for
    dst_idx's full width) can be captured once and replayed while the count changes: the
    fetched rows of a step land inside the replayed decode graph."""
    R = dst[0].numel()
    assert src[0].numel() == R and dst.is_contiguous() and src.is_contiguous() and dst_idx.stride(-1) == 1
    B, M = dst_idx.shape
    if B and M:
        _scatter_rows[(B, M)](
            src, dst, dst_idx, width, R, dst_idx.stride(0), R, BLOCK=min(block, triton.next_power_of_2(R))
        )


# ---------------------------------------------------------------------------
# 5. gathering rows straight from pinned host memory (zero-copy, over PCIe)
# ---------------------------------------------------------------------------


@triton.jit
def _copy_row(src, dst, R, BLOCK: tl.constexpr):
    for r0 in range(0, R, BLOCK):
        offs = r0 + tl.arange(0, BLOCK)
        m = offs < R
        tl.store(dst + offs, tl.load(src + offs, mask=m), mask=m)


@triton.jit
def _gather_host_rows(
    SRC,
    DST,
    SRC_IDX,
    DST_IDX,
    WIDTH,
    n_seq,
    sib,
    dib,
    R,
    PROGRAMS: tl.constexpr,
    BLOCK: tl.constexpr,
    DST_DENSE: tl.constexpr,
):
    # a few programs loop over the rows, so the gather leaves most SMs to the compute
    # stream's kernels while its loads wait on PCIe
    pid = tl.program_id(0)
    width = tl.load(WIDTH).to(tl.int64)
    total = n_seq * width
    for r in range(pid, total, PROGRAMS):
        b = r // width
        i = r - b * width
        src = SRC + tl.load(SRC_IDX + b * sib + i).to(tl.int64) * R
        if DST_DENSE:  # noqa: SIM108 - a constexpr branch: the other one's load is never compiled
            dst = DST + r * R
        else:
            dst = DST + tl.load(DST_IDX + b * dib + i).to(tl.int64) * R
        _copy_row(src, dst, R, BLOCK)


@triton.jit
def _gather_host_layer(
    KV_SRC,
    KV_DST,
    SC_SRC,
    SC_DST,
    KV_IDX,
    KV_W,
    X_SRC,
    X_DST,
    X_IDX,
    X_W,
    n_seq,
    kib,
    xib,
    R_KV,
    R_SC,
    R_X,
    PROGRAMS: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    BLOCK_SC: tl.constexpr,
    BLOCK_X: tl.constexpr,
    HAS_SC: tl.constexpr,
    HAS_X: tl.constexpr,
):
    # one launch for a layer's parts: the KV rows (with their INT8 scale rows, same ids),
    # then the inputs x; a program that runs out of KV rows goes on to x rows at once
    pid = tl.program_id(0)
    wk = tl.load(KV_W).to(tl.int64)
    for r in range(pid, n_seq * wk, PROGRAMS):
        b = r // wk
        row = tl.load(KV_IDX + b * kib + (r - b * wk)).to(tl.int64)
        if HAS_SC:  # a scale row (BLOCK_SC covers it) is read beside its KV row, not after it
            so = tl.arange(0, BLOCK_SC)
            sv = tl.load(SC_SRC + row * R_SC + so, mask=so < R_SC)
        _copy_row(KV_SRC + row * R_KV, KV_DST + r * R_KV, R_KV, BLOCK_KV)
        if HAS_SC:
            tl.store(SC_DST + r * R_SC + so, sv, mask=so < R_SC)
    if HAS_X:
        wx = tl.load(X_W).to(tl.int64)
        for r in range(pid, n_seq * wx, PROGRAMS):
            b = r // wx
            row = tl.load(X_IDX + b * xib + (r - b * wx)).to(tl.int64)
            _copy_row(X_SRC + row * R_X, X_DST + r * R_X, R_X, BLOCK_X)


def gather_host_layer(
    kv: tuple[torch.Tensor, torch.Tensor],
    kv_idx: torch.Tensor,
    kv_width: torch.Tensor,
    sc: tuple[torch.Tensor, torch.Tensor] | None = None,
    x: tuple[torch.Tensor, torch.Tensor] | None = None,
    x_idx: torch.Tensor | None = None,
    x_width: torch.Tensor | None = None,
    programs: int = 8,
    block: int = 8192,
    num_warps: int = 8,
) -> None:
    """``gather_host_rows`` for all of a layer's parts in one launch: kv = (dst, src) rows
    by kv_idx [B, >= width] up to kv_width, sc = (dst, src) the INT8 scale rows of the same
    ids, x = (dst, src) the layer inputs by x_idx up to x_width; destinations dense
    (b * width + i). One kernel instead of one per part: each launch on the copy stream
    waits for free SMs beside the compute stream's kernels, and pays its fixed cost."""
    kv_dst, kv_src = kv
    B = kv_idx.shape[0]
    parts = [(kv_dst, kv_src)] + ([sc] if sc is not None else []) + ([x] if x is not None else [])
    for d, s in parts:
        assert d[0].numel() == s[0].numel() and d.is_contiguous() and s.is_contiguous()
    assert kv_idx.stride(-1) == 1 and (
        x is None or (x_idx is not None and x_width is not None and x_idx.stride(-1) == 1 and x_idx.shape[0] == B)
    )
    if not B:
        return
    sc_dst, sc_src = sc if sc is not None else (kv_dst, kv_src)
    x_dst, x_src = x if x is not None else (kv_dst, kv_src)
    xi = x_idx if x is not None and x_idx is not None else kv_idx
    xw = x_width if x is not None and x_width is not None else kv_width
    r_kv, r_sc, r_x = kv_src[0].numel(), sc_src[0].numel(), x_src[0].numel()

    def blk(r: int) -> int:
        return min(block, triton.next_power_of_2(r))

    _gather_host_layer[(programs,)](
        kv_src,
        kv_dst,
        sc_src,
        sc_dst,
        kv_idx,
        kv_width,
        x_src,
        x_dst,
        xi,
        xw,
        B,
        kv_idx.stride(0),
        xi.stride(0),
        r_kv,
        r_sc,
        r_x,
        PROGRAMS=programs,
        BLOCK_KV=blk(r_kv),
        BLOCK_SC=triton.next_power_of_2(r_sc),
        BLOCK_X=blk(r_x),
        HAS_SC=sc is not None,
        HAS_X=x is not None,
        num_warps=num_warps,
    )


def gather_host_rows(
    dst: torch.Tensor,
    src: torch.Tensor,
    src_idx: torch.Tensor,
    width: torch.Tensor,
    dst_idx: torch.Tensor | None = None,
    programs: int = 16,
    block: int = 4096,
    num_warps: int = 8,
) -> None:
    """For every sequence b and i < width: dst row (b * width + i, or dst_idx[b, i]) =
    src[src_idx[b, i]], rows of the last dims. On a GPU, src may be pinned host memory:
    the kernel reads it directly over PCIe (unified addressing), so a token-level fetch
    needs no CPU gather and no staging copy. ``width`` is a one-element integer device
    tensor (the count is read on the device, so the launch can be captured and replayed);
    ``programs`` bounds how many SMs the gather holds while compute runs beside it."""
    R = src[0].numel()
    assert dst[0].numel() == R and dst.is_contiguous() and src.is_contiguous() and src_idx.stride(-1) == 1
    B = src_idx.shape[0]
    dense = dst_idx is None
    if dst_idx is not None:
        assert dst_idx.stride(-1) == 1 and dst_idx.shape[0] == B
    di = src_idx if dst_idx is None else dst_idx
    if B and src_idx.shape[-1]:
        _gather_host_rows[(programs,)](
            src,
            dst,
            src_idx,
            di,
            width,
            B,
            src_idx.stride(0),
            di.stride(0),
            R,
            PROGRAMS=programs,
            BLOCK=min(block, triton.next_power_of_2(R)),
            DST_DENSE=dense,
            num_warps=num_warps,
        )
