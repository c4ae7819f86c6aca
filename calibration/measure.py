"""Measurements on the local GPU and host. Each returns plain rows (dicts) with the
median time and its spread (10th and 90th percentiles) over many repeats.

GPU kernels (GEMMs, attention, quantisation) are timed as the GPU runs them inside a
decode step: captured in a CUDA graph, back to back, each after an L2 flush, less the
flushes' own time (``time_gpu``). Timing one launch between two events instead counts
the host's dispatch and the GPU's idle wake-up (the first profile's 12288x4096 GEMM at
8 tokens read 63 us that way against 36 us in a graph; the attention kernel 149 us
against 30 us: a host-cost probe on the lent H100, in git history). The host's part is
measured apart, by running the executor (``host_issue``). Transfers use events around single copies; host-only work (CPU
gathers) a monotonic clock. Inputs are random, never zeros.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch

from alisa.runtime.fetch import fetch_threads_default


@dataclass(frozen=True)
class Grid:
    transfer_sizes: list[int]
    chunk_bytes: list[int]
    chunk_counts: list[int]
    gather_rows: list[int]
    gather_row_bytes: list[int]
    gather_threads: list[int]
    gather_source_bytes: int
    fetch_rows: list[int]
    gemm_tokens: list[int]
    attention_tokens: list[int]
    attention_batches: list[int]
    repeats: int


def quick_grid() -> Grid:
    return Grid(
        transfer_sizes=[4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20],
        chunk_bytes=[16 << 10],
        chunk_counts=[16, 256],
        gather_rows=[256, 4096],
        gather_row_bytes=[16 << 10],
        gather_threads=[fetch_threads_default()],
        gather_source_bytes=512 << 20,
        fetch_rows=[256, 1024],
        gemm_tokens=[1, 8, 64, 512, 4096],
        attention_tokens=[256, 2048, 16384],
        attention_batches=[8, 32],
        repeats=15,
    )


def full_grid(threads: int) -> Grid:
    return Grid(
        transfer_sizes=[(4 << 10) << (2 * i) for i in range(10)],  # 4 KiB .. 1 GiB
        chunk_bytes=[4 << 10, 16 << 10, 64 << 10],
        chunk_counts=[16, 256, 2048],
        gather_rows=[64, 256, 1024, 4096, 16384],
        gather_row_bytes=[2 << 10, 16 << 10],
        # the fetch worker's thread count: what the real backend gathers with
        gather_threads=[fetch_threads_default()],
        gather_source_bytes=4 << 30,
        fetch_rows=[64, 128, 256, 512, 1024, 2048, 4096],
        gemm_tokens=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
        attention_tokens=[64, 256, 1024, 4096, 16384, 65536],
        attention_batches=[1, 8, 32],
        repeats=30,
    )


def _stats(ts: list[float]) -> tuple[float, float, float]:
    ts = sorted(ts)
    q = lambda f: ts[min(len(ts) - 1, int(f * (len(ts) - 1) + 0.5))]  # noqa: E731
    return statistics.median(ts), q(0.1), q(0.9)


def time_cuda(fn: Callable[[], object], repeats: int, warmup: int = 3) -> tuple[float, float, float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e-3)
    return _stats(ts)


def time_gpu(
    fn: Callable[[], object], repeats: int, per_graph: int = 8, flush_bytes: int = 128 << 20
) -> tuple[float, float, float]:
    """GPU time of fn, without host dispatch: per_graph calls captured in a CUDA graph,
    each after a memset bigger than L2 (a decode step streams weights between two calls
    of a kernel, so nothing stays cached), less a graph of the memsets alone. Falls back
    to ``time_cuda`` where fn cannot be captured."""
    flush = torch.empty(flush_bytes, dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graphs = []
    try:
        for with_fn in (True, False):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(per_graph):
                    flush.zero_()
                    if with_fn:
                        fn()
            graphs.append(g)
    except RuntimeError:
        torch.cuda.synchronize()
        return time_cuda(fn, repeats)
    ts = []
    for _ in range(repeats):
        pair = []
        for g in graphs:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            pair.append(a.elapsed_time(b) * 1e-3)
        ts.append(max(1e-7, (pair[0] - pair[1]) / per_graph))
    del graphs, flush
    return _stats(ts)


def time_host(fn: Callable[[], object], repeats: int, warmup: int = 2) -> tuple[float, float, float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return _stats(ts)


def _row(op: str, size: float, st: tuple[float, float, float], **params: object) -> dict:
    return {"op": op, "size": float(size), "seconds": st[0], "p10": st[1], "p90": st[2], **params}


def launch_latency(repeats: int) -> dict:
    """The GPU's time per minimal kernel back to back (launch gap included), in a graph:
    the host's dispatch is the ``host`` section's business."""
    x = torch.randn(1, device="cuda")
    n = 50

    def many() -> None:
        for _ in range(n):
            x.add_(1.0)

    g = torch.cuda.CUDAGraph()
    many()
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        many()
    med, lo, hi = time_cuda(g.replay, max(5, repeats // 3))
    return _row("launch", 1, (med / n, lo / n, hi / n))


def hbm_copy(repeats: int) -> dict:
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    st = time_cuda(partial(b.copy_, a), repeats)
    del a, b
    return _row("hbm_copy", 2 * n, st)  # bytes read + written


def _both_directions(
    streams: tuple[torch.cuda.Stream, torch.cuda.Stream],
    d: torch.Tensor,
    hp: torch.Tensor,
    d2: torch.Tensor,
    hp2: torch.Tensor,
) -> None:
    """H2D (hp -> d) and D2H (d2 -> hp2) at once, each on its own stream."""
    s1, s2 = streams
    cur = torch.cuda.current_stream()
    s1.wait_stream(cur)
    s2.wait_stream(cur)
    with torch.cuda.stream(s1):
        d.copy_(hp, non_blocking=True)
    with torch.cuda.stream(s2):
        hp2.copy_(d2, non_blocking=True)
    cur.wait_stream(s1)
    cur.wait_stream(s2)


def _copy_chunks(views: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for d, h in views:
        d.copy_(h, non_blocking=True)


def transfers(g: Grid) -> list[dict]:
    rows = []
    top = max(g.transfer_sizes)
    pinned = torch.empty(top, dtype=torch.uint8, pin_memory=True).random_()
    pageable = torch.empty(top, dtype=torch.uint8).random_()
    dev = torch.empty(top, dtype=torch.uint8, device="cuda").random_()
    dev2 = torch.empty(top, dtype=torch.uint8, device="cuda").random_()
    pinned2 = torch.empty(top, dtype=torch.uint8, pin_memory=True)
    reps = lambda s: max(5, g.repeats if s < (64 << 20) else g.repeats // 3)  # noqa: E731
    for s in g.transfer_sizes:
        d, hp, hq = dev[:s], pinned[:s], pageable[:s]
        rows.append(_row("h2d_pinned", s, time_cuda(partial(d.copy_, hp, non_blocking=True), reps(s))))
        rows.append(_row("d2h_pinned", s, time_cuda(partial(hp.copy_, d, non_blocking=True), reps(s))))
        rows.append(_row("h2d_pageable", s, time_cuda(partial(d.copy_, hq), reps(s))))
        rows.append(_row("d2h_pageable", s, time_cuda(partial(hq.copy_, d), reps(s))))
        # both directions at once on two streams: is PCIe full duplex here?
        both = partial(_both_directions, (torch.cuda.Stream(), torch.cuda.Stream()), d, hp, dev2[:s], pinned2[:s])
        rows.append(_row("h2d_d2h_concurrent", s, time_cuda(both, reps(s))))
    for m in g.chunk_bytes:
        for n in g.chunk_counts:
            if m * n > top:
                continue
            views = [(dev[i * m : (i + 1) * m], pinned[i * m : (i + 1) * m]) for i in range(n)]
            chunked = partial(_copy_chunks, views)
            rows.append(_row("h2d_chunked", m * n, time_cuda(chunked, max(5, g.repeats // 2)), chunk_bytes=m, chunks=n))
    del pinned, pageable, dev, dev2, pinned2
    torch.cuda.empty_cache()
    return rows


def _gather_next(src: torch.Tensor, lists: Iterator[torch.Tensor], out: torch.Tensor) -> None:
    torch.index_select(src, 0, next(lists), out=out)


def cpu_gather(g: Grid) -> list[dict]:
    """index_select of scattered KV rows into pinned staging, by rows, row bytes, threads,
    as the real backend's fetch worker runs it: from a pinned source far larger than the
    last-level cache, fresh random rows each repetition (a repeated index list, or a small
    source, measures the cache: 200 GB/s on the H100 host against ~40 GB/s cold)."""
    rows = []
    old = torch.get_num_threads()
    src_bytes = g.gather_source_bytes
    try:
        for rb in g.gather_row_bytes:
            total_rows = max(max(g.gather_rows) * 4, src_bytes // rb)
            src = torch.empty(total_rows, rb // 2, dtype=torch.float16, pin_memory=torch.cuda.is_available())
            src.view(torch.int16).random_(-1000, 1000)
            gen = torch.Generator().manual_seed(0)
            for r in g.gather_rows:
                out = torch.empty(r, rb // 2, dtype=torch.float16, pin_memory=torch.cuda.is_available())
                for t in g.gather_threads:
                    torch.set_num_threads(t)
                    reps = max(5, g.repeats // 2)
                    lists = [torch.randint(0, total_rows, (r,), generator=gen) for _ in range(reps + 2)]
                    st = time_host(partial(_gather_next, src, iter(lists), out), reps)
                    rows.append(_row("cpu_gather", r * rb, st, rows=r, row_bytes=rb, threads=t))
            del src
    finally:
        torch.set_num_threads(old)
    return rows


def fetch_pipeline(g: Grid, layers: int = 16, passes: int = 3) -> list[dict]:
    """The fetch worker's steady state, as the real backend runs it: per layer, gather its
    rows (16 KiB, scattered over a large pinned source) into one of two pinned staging
    buffers while the previous layer's H2D copy runs, then copy them to one of two GPU
    buffers; a layer's gather waits for the copy that last used its buffer. Gathers and
    copies share the host's memory, so each runs slower here than alone (on the H100
    host about half as fast); the simulator's CPU-gather and token-fetch H2D tables come
    from this (``cpu_gather_pipelined``, ``h2d_fetch``)."""
    rb = max(g.gather_row_bytes)
    total_rows = max(max(g.fetch_rows) * 4, g.gather_source_bytes // rb)
    src = torch.empty(total_rows, rb // 2, dtype=torch.float16, pin_memory=True)
    src.view(torch.int16).random_(-1000, 1000)
    R = max(g.fetch_rows)
    stage = [torch.empty(R, rb // 2, dtype=torch.float16, pin_memory=True) for _ in range(2)]
    land = [torch.empty(R, rb // 2, dtype=torch.float16, device="cuda") for _ in range(2)]
    copy_stream = torch.cuda.Stream()
    gen = torch.Generator().manual_seed(1)
    old = torch.get_num_threads()
    torch.set_num_threads(fetch_threads_default())
    rows = []
    try:
        for r in g.fetch_rows:
            gathers: list[float] = []
            marks = []
            for _ in range(passes):
                done: list[torch.cuda.Event] = []
                for l in range(layers):
                    p = l % 2
                    if l >= 2:
                        done[l - 2].synchronize()
                    idx = torch.randint(0, total_rows, (r,), generator=gen)
                    t0 = time.perf_counter()
                    torch.index_select(src, 0, idx, out=stage[p][:r])
                    gathers.append(time.perf_counter() - t0)
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    with torch.cuda.stream(copy_stream):
                        e0.record(copy_stream)
                        land[p][:r].copy_(stage[p][:r], non_blocking=True)
                        e1.record(copy_stream)
                    done.append(e1)
                    marks.append((e0, e1))
                copy_stream.synchronize()
            copies = [a.elapsed_time(b) / 1e3 for a, b in marks]
            rows.append(
                _row(
                    "cpu_gather_pipelined",
                    r * rb,
                    _stats(gathers),
                    rows=r,
                    row_bytes=rb,
                    threads=fetch_threads_default(),
                )
            )
            rows.append(_row("h2d_fetch", r * rb, _stats(copies), rows=r, row_bytes=rb))
    finally:
        torch.set_num_threads(old)
    del src, stage, land
    torch.cuda.empty_cache()
    return rows


def gemms(shapes: list[tuple[int, int]], g: Grid) -> list[dict]:
    rows = []
    for n, k in shapes:
        w = torch.randn(k, n, device="cuda", dtype=torch.float16)
        for m in g.gemm_tokens:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            st = time_gpu(partial(torch.matmul, x, w), max(5, g.repeats // 2))
            rows.append(_row(f"gemm:{n}x{k}", m, st, m=m, n=n, k=k, flops=2.0 * m * n * k))
        del w
    torch.cuda.empty_cache()
    return rows


def attention(g: Grid) -> list[dict]:
    """The SWA sparse decode kernel (fp16 and INT8 K/V; a selection, and a whole cache as
    the executor's dense runs attend it), dense SDPA decode, prefill SDPA."""
    import torch.nn.functional as F

    from alisa.kernels.swa_triton import quantize_kv, sparse_decode_attention

    rows = []
    hq, d = 32, 128
    gen = torch.Generator(device="cuda").manual_seed(0)
    for gqa in (1, 4):
        hkv = hq // gqa
        for b in g.attention_batches:
            for a in g.attention_tokens:
                ctx = a * 2
                if 2 * b * hkv * ctx * d * 2 > 16e9:
                    continue
                q = torch.randn(b, hq, d, device="cuda", dtype=torch.float16, generator=gen)
                k = torch.randn(b, hkv, ctx, d, device="cuda", dtype=torch.float16, generator=gen)
                v = torch.randn_like(k)
                idx = torch.rand(b, hkv, ctx, device="cuda", generator=gen).argsort(-1)[..., :a].sort(-1).values
                idx = idx.to(torch.int32).contiguous()
                ln = torch.full((b, hkv), a, device="cuda", dtype=torch.int32)
                out = torch.empty(b, hq, d, device="cuda", dtype=torch.float16)
                kv_bytes = b * hkv * a * d * 2 * 2
                st = time_gpu(partial(sparse_decode_attention, q, k, v, idx, ln, out=out), g.repeats)
                rows.append(_row("attention_decode", kv_bytes, st, batch=b, gqa=gqa, attended=a, kv="fp16"))
                kq, ks = quantize_kv(k)
                vq, vs = quantize_kv(v)
                st = time_gpu(
                    partial(sparse_decode_attention, q, kq, vq, idx, ln, k_scale=ks, v_scale=vs, out=out), g.repeats
                )
                rows.append(
                    _row(
                        "attention_decode_int8", b * hkv * a * (d + 2) * 2, st, batch=b, gqa=gqa, attended=a, kv="int8"
                    )
                )
                # a dense cache as the executor attends it: the pool's token-major rows
                # [b, tokens, K/V, heads, d], every row in order through an index shared by
                # the heads, lengths read on the device (runtime/slot_cache.py attend)
                pool = torch.randn(b, a, 2, hkv, d, device="cuda", dtype=torch.float16, generator=gen)
                pk, pv = pool[:, :, 0].permute(0, 2, 1, 3), pool[:, :, 1].permute(0, 2, 1, 3)
                seq = torch.arange(a, device="cuda", dtype=torch.int32)[None, None, :].expand(b, hkv, a)
                st = time_gpu(
                    partial(sparse_decode_attention, q, pk, pv, seq, ln, out=out, lengths_vary=True), g.repeats
                )
                rows.append(_row("attention_decode_contiguous", kv_bytes, st, batch=b, gqa=gqa, attended=a))
                del pool, pk, pv
                sdpa = partial(
                    F.scaled_dot_product_attention, q[:, :, None], k[:, :, :a], v[:, :, :a], enable_gqa=gqa > 1
                )
                st = time_gpu(sdpa, g.repeats)
                rows.append(_row("attention_dense_sdpa", kv_bytes, st, batch=b, gqa=gqa, attended=a))
                x = k[:, :, :a]
                st = time_gpu(partial(quantize_kv, x), g.repeats)
                rows.append(_row("quantize_int8", x.numel() * 2, st))
                del q, k, v, kq, vq, out
            torch.cuda.empty_cache()
    for p in (512, 2048):
        q = torch.randn(4, hq, p, d, device="cuda", dtype=torch.float16, generator=gen)
        st = time_gpu(partial(F.scaled_dot_product_attention, q, q, q, is_causal=True), g.repeats)
        rows.append(_row("attention_prefill", 4.0 * 4 * hq * d * p * p / 2, st, batch=4, prompt=p))
    return rows
