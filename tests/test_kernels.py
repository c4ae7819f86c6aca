"""Triton kernels against their float64 torch references (TRITON_INTERPRET=1 on CPU).

Fresh random shapes and seeds each run (the seed is printed on failure); outputs are
poisoned with NaN before each launch, so an unwritten element fails the comparison.
"""

from __future__ import annotations

import random

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

import torch

from alisa.kernels.reference import (
    dequantize_kv_ref,
    gather_rows_ref,
    importance_update_ref,
    quantize_kv_ref,
    scatter_rows_ref,
    sparse_decode_attention_ref,
)
from alisa.kernels.swa_triton import (
    attention_weights,
    gather_host_layer,
    gather_host_rows,
    importance_update,
    quantize_kv,
    scatter_rows,
    sparse_decode_attention,
)

SEED = random.SystemRandom().randrange(2**31)
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU the same tests run compiled


def dev(*xs):
    return [x.to(DEV) for x in xs]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite (unwritten?) output"
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _case(
    gen: torch.Generator, B: int, Hkv: int, G: int, N: int, D: int, I: int, lengths_kind: str, dtype=torch.float16
):
    q = torch.randn(B, Hkv * G, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, N, D, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, N, D, generator=gen).to(dtype)
    idx = torch.stack([torch.stack([torch.randperm(N, generator=gen)[:I] for _ in range(Hkv)]) for _ in range(B)])
    if lengths_kind == "full":
        lengths = torch.full((B, Hkv), I, dtype=torch.int32)
    elif lengths_kind == "empty":
        lengths = torch.zeros((B, Hkv), dtype=torch.int32)
    else:
        lengths = torch.randint(0, I + 1, (B, Hkv), generator=gen, dtype=torch.int32)
        lengths[0, 0] = I
    return q, k, v, idx.to(torch.int32), lengths


@pytest.mark.parametrize("dense", [True, False], ids=["to-staging", "to-slots"])
@pytest.mark.parametrize("dtype,row", [(torch.float16, (2, 3, 40)), (torch.int8, (2, 3, 40)), (torch.float32, (6,))])
def test_gather_host_rows_matches_reference_for_each_width(dtype, row, dense):
    """The device gather: rows of a host tensor (pinned on a GPU machine, read over PCIe)
    by index, to dense staging rows or to slots; one launch shape for every count read
    on the device, zero included; a few programs loop over all the rows."""
    gen = torch.Generator().manual_seed(SEED)
    B, K, N, S = 3, 7, 40, 50
    src = (torch.randn(N * B, *row, generator=gen) * 50).to(dtype)
    if DEV == "cuda":
        src = src.pin_memory()
    idx = torch.randint(0, N * B, (B, K), generator=gen)
    for width in (0, 1, 4, K):
        dst = (torch.randn(S if not dense else B * K, *row, generator=gen) * 50).to(dtype)
        slots = None if dense else torch.randperm(S, generator=gen)[: B * K].view(B, K)  # distinct, as the cache's
        ref = dst.clone()
        gather_rows_ref(ref, src, idx, width, slots)
        d = dst.to(DEV)
        gather_host_rows(
            d,
            src,
            idx.to(DEV),
            torch.tensor([width], dtype=torch.int32, device=DEV),
            None if slots is None else slots.to(DEV),
            programs=2,
            block=16,
        )
        assert torch.equal(d.cpu(), ref), f"seed {SEED} width {width}"


@pytest.mark.parametrize("int8", [False, True], ids=["fp16-kv", "int8-kv"])
@pytest.mark.parametrize("with_x", [True, False], ids=["kv+x", "kv-only"])
def test_gather_host_layer_matches_reference_per_part(int8, with_x):
    """The one-launch device gather of a layer: KV rows (and their INT8 scale rows, by the
    same ids) and inputs x, each to dense staging up to its own count, zero included; as
    the per-part gather and the row-by-row reference."""
    gen = torch.Generator().manual_seed(SEED)
    B, K, N = 3, 6, 30
    kv_dt = torch.int8 if int8 else torch.float16
    kv_src = (torch.randn(N * B, 2, 2, 24, generator=gen) * 50).to(kv_dt)
    sc_src = torch.randn(N * B, 2, 2, generator=gen).half()
    x_src = torch.randn(N * B, 40, generator=gen).half()
    if DEV == "cuda":
        kv_src, sc_src, x_src = kv_src.pin_memory(), sc_src.pin_memory(), x_src.pin_memory()
    kv_idx = torch.randint(0, N * B, (B, K), generator=gen)
    x_idx = torch.randint(0, N * B, (B, K), generator=gen)
    for wk, wx in ((0, 0), (0, 4), (2, 0), (1, K), (K, 3), (K, K)):
        ref = {
            n: torch.full((B * K, *s.shape[1:]), 7).to(s.dtype)
            for n, s in (("kv", kv_src), ("sc", sc_src), ("x", x_src))
        }
        got = {n: t.clone().to(DEV) for n, t in ref.items()}
        gather_rows_ref(ref["kv"], kv_src, kv_idx, wk)
        if int8:
            gather_rows_ref(ref["sc"], sc_src, kv_idx, wk)
        if with_x:
            gather_rows_ref(ref["x"], x_src, x_idx, wx)
        i32 = lambda v: torch.tensor([v], dtype=torch.int32, device=DEV)  # noqa: E731
        gather_host_layer(
            (got["kv"], kv_src),
            kv_idx.to(DEV),
            i32(wk),
            sc=(got["sc"], sc_src) if int8 else None,
            x=(got["x"], x_src) if with_x else None,
            x_idx=x_idx.to(DEV) if with_x else None,
            x_width=i32(wx) if with_x else None,
            programs=2,
            block=16,
        )
        for n in ref:
            assert torch.equal(got[n].cpu(), ref[n]), f"seed {SEED} part {n} widths {(wk, wx)}"


@pytest.mark.parametrize("G", [1, 4, 8])
@pytest.mark.parametrize("lengths_kind", ["ragged", "full", "empty"])
@pytest.mark.parametrize("lengths_vary", [False, True])
def test_sparse_decode_attention_matches_reference(G, lengths_kind, lengths_vary):
    gen = torch.Generator().manual_seed(SEED + G)
    rnd = random.Random(SEED + G)
    B, Hkv = rnd.randint(1, 3), rnd.choice([1, 2])
    N = rnd.randint(20, 150)  # not a multiple of the block
    D = rnd.choice([16, 32, 64])
    I = rnd.randint(1, N)
    q, k, v, idx, lengths = _case(gen, B, Hkv, G, N, D, I, lengths_kind)
    poisoned = torch.full(q.shape, float("nan"), dtype=q.dtype, device=DEV)
    out, lse, scores = sparse_decode_attention(
        *dev(q, k, v, idx, lengths),
        return_scores=True,
        num_splits=rnd.choice([1, 2, 3]),
        block_n=16,
        out=poisoned,
        lengths_vary=lengths_vary,
    )
    assert out.data_ptr() == poisoned.data_ptr()
    out, lse, scores = out.cpu(), lse.cpu(), scores.cpu()
    ref_o, ref_lse, ref_w = sparse_decode_attention_ref(q, k, v, idx, lengths)
    msg = f"seed {SEED} B{B} Hkv{Hkv} G{G} N{N} D{D} I{I}"
    if lengths_kind == "empty":
        assert torch.equal(out.float(), torch.zeros_like(out.float())), msg
        assert torch.isinf(lse).all() and (lse < 0).all(), msg
        return
    assert _rel(out, ref_o) < 1e-3, msg
    live = torch.isfinite(ref_lse)
    assert torch.allclose(lse[live].double(), ref_lse[live], atol=1e-3), msg
    w = attention_weights(scores, lse, lengths)
    assert _rel(w, ref_w) < 1e-3, msg


def test_sparse_decode_bf16_inputs():
    gen = torch.Generator().manual_seed(SEED)
    q, k, v, idx, lengths = _case(gen, 2, 2, 4, 70, 32, 33, "ragged", dtype=torch.bfloat16)
    out, _, _ = sparse_decode_attention(*dev(q, k, v, idx, lengths), block_n=16)
    out = out.cpu()
    ref, _, _ = sparse_decode_attention_ref(q, k, v, idx, lengths)
    assert out.dtype == torch.bfloat16
    assert _rel(out, ref) < 1e-2, f"seed {SEED}"  # bf16 output rounding (8 bits of mantissa)


def test_quantize_kv_matches_reference_and_bounds_error():
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(3, 2, 37, 64, generator=gen).half() * 3
    x[0, 0, 0] = 0  # an all-zero row keeps scale 1
    q, s = (t.cpu() for t in quantize_kv(x.to(DEV)))
    rq, rs = quantize_kv_ref(x)
    assert torch.equal(s, rs), f"seed {SEED}"
    assert (q.int() - rq.int()).abs().max() <= 1, f"seed {SEED}"  # ties may round either way
    err = (dequantize_kv_ref(q, s) - x.float()).abs()
    assert (err <= s.float()[..., None] * 0.5 + 1e-3).all()


@pytest.mark.parametrize("dtype,row", [(torch.float16, (2, 3, 40)), (torch.int8, (2, 3, 40)), (torch.float16, (6,))])
def test_scatter_rows_matches_reference_for_each_width(dtype, row):
    """One launch shape (the buffer's full width) serves every count read on the device,
    zero included; rows past the count are untouched."""
    gen = torch.Generator().manual_seed(SEED)
    B, M, S = 3, 7, 50
    src = (torch.randn(B * M, *row, generator=gen) * 50).to(dtype)
    for width in (0, 1, 4, M):
        dst = (torch.randn(S, *row, generator=gen) * 50).to(dtype)
        idx = torch.randperm(S, generator=gen)[: B * M].view(B, M)  # distinct slots, as the cache's are
        ref = dst.clone()
        scatter_rows_ref(ref, src, idx, width)
        d = dst.to(DEV)
        scatter_rows(d, src.to(DEV), idx.to(DEV), torch.tensor([width], dtype=torch.int32, device=DEV), block=16)
        assert torch.equal(d.cpu(), ref), f"seed {SEED} width {width}"


@pytest.mark.parametrize("G", [1, 4, 8])
def test_sparse_decode_int8_kv(G):
    gen = torch.Generator().manual_seed(SEED + 10 * G)
    q, k, v, idx, lengths = _case(gen, 2, 2, G, 90, 64, 50, "ragged")
    kq, ks = (t.cpu() for t in quantize_kv(k.to(DEV)))
    vq, vs = (t.cpu() for t in quantize_kv(v.to(DEV)))
    out, _, _ = sparse_decode_attention(
        *dev(q, kq, vq, idx, lengths), k_scale=ks.to(DEV), v_scale=vs.to(DEV), block_n=16
    )
    out = out.cpu()
    ref, _, _ = sparse_decode_attention_ref(q, k, v, idx, lengths)  # against fp16 K/V
    assert _rel(out, ref) < 2e-2, f"seed {SEED}"
    ref_q, _, _ = sparse_decode_attention_ref(q, kq, vq, idx, lengths, k_scale=ks, v_scale=vs)
    assert _rel(out, ref_q) < 1e-3, f"seed {SEED}"  # same math as the dequantised ref


@pytest.mark.parametrize("G", [1, 4])
def test_importance_update_matches_reference_over_steps(G):
    gen = torch.Generator().manual_seed(SEED + G)
    B, Hkv, N, D, I, k_steps = 2, 2, 60, 16, 24, 3
    score = torch.zeros(B, Hkv, N)
    ring_idx = torch.zeros(B, Hkv, k_steps, I, dtype=torch.int32)
    ring_w = torch.zeros(B, Hkv, k_steps, I)
    ring_len = torch.zeros(B, Hkv, k_steps, dtype=torch.int32)
    r_score, r_idx, r_w, r_len = score.clone(), ring_idx.clone(), ring_w.clone(), ring_len.clone()
    score, ring_idx, ring_w, ring_len = dev(score, ring_idx, ring_w, ring_len)
    history = []
    for step in range(7):  # more steps than slots: exercises the subtraction
        q, kk, vv, idx, lengths = _case(gen, B, Hkv, G, N, D, I, "ragged")
        _, lse, scores = sparse_decode_attention(*dev(q, kk, vv, idx, lengths), return_scores=True, block_n=16)
        # the slot as an int, or (odd steps) as a device tensor, as a replayed CUDA graph passes it
        slot = step % k_steps if step % 2 == 0 else torch.tensor([step % k_steps], dtype=torch.int32, device=DEV)
        importance_update(score, ring_idx, ring_w, ring_len, slot, *dev(idx, lengths), scores, lse, block_n=16)
        _, _, w = sparse_decode_attention_ref(q, kk, vv, idx, lengths, dtype=torch.float32)
        importance_update_ref(r_score, r_idx, r_w, r_len, step % k_steps, idx, lengths, w)
        history.append((idx, lengths, w))
        assert torch.allclose(score.cpu(), r_score, atol=1e-4), f"seed {SEED} step {step}"
    # independent check: the sum over the last k steps computed from scratch
    want = torch.zeros(B, Hkv, N)
    for idx, lengths, w in history[-k_steps:]:
        for b in range(B):
            for hk in range(Hkv):
                n = int(lengths[b, hk])
                want[b, hk].index_add_(0, idx[b, hk, :n].long(), w[b, hk * G : (hk + 1) * G, :n].sum(0))
    assert torch.allclose(score.cpu(), want, atol=1e-4), f"seed {SEED}"


def test_rejects_bad_inputs():
    q = torch.randn(1, 3, 16, device=DEV).half()
    k = torch.randn(1, 2, 8, 16, device=DEV).half()
    with pytest.raises(ValueError):
        sparse_decode_attention(
            q, k, k, torch.zeros(1, 2, 4, dtype=torch.int32, device=DEV), torch.ones(1, 2, device=DEV)
        )
    with pytest.raises(TypeError):
        sparse_decode_attention(
            q.float()[:, :2], k, k, torch.zeros(1, 2, 4, dtype=torch.int32, device=DEV), torch.ones(1, 2, device=DEV)
        )
