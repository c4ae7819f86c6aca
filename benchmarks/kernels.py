"""SWA sparse decode attention on a GPU: time, bytes, bandwidth, and what a user would
otherwise run. Prints a table; writes JSON and Markdown (command, device, date).

    python benchmarks/kernels.py [--quick] [--out DIR]

Grid: batch {1,8,32,128} x context {1k,4k,16k,32k} x sparsity {0.5,0.8,0.9} x GQA {1,8},
32 query heads, head_dim 128, fp16. Sparse time is measured twice: eager (Python launch included) and as a CUDA-graph
replay (GB/s and %HBM use the graph time). Compared with (a) torch gather (index_select-style)
+ scaled_dot_product_attention over the same rows and (b) dense SDPA over the whole cache.
The HBM ceiling is measured in the same run (a large device-to-device copy).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import append_record, machine

HQ, D = 32, 128
KV_LIMIT_BYTES = 24e9  # skip points whose fp16 KV cache would not fit beside the baselines


def bench(fn, warmup_ms=25, rep_ms=100) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")) * 1e-3


def hbm_ceiling_gbps() -> float:
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    t = bench(lambda: b.copy_(a))
    return 2 * n / t / 1e9


def run_point(B, ctx, s, gqa, block_n, gen, num_stages=None):
    from alisa.kernels.swa_triton import sparse_decode_attention

    hkv = HQ // gqa
    I = max(1, math.ceil((1 - s) * ctx))
    q = torch.randn(B, HQ, D, device="cuda", dtype=torch.float16, generator=gen)
    k = torch.randn(B, hkv, ctx, D, device="cuda", dtype=torch.float16, generator=gen)
    v = torch.randn(B, hkv, ctx, D, device="cuda", dtype=torch.float16, generator=gen)
    # a real SWA selection: recent window + scattered earlier tokens, sorted
    w = I // 2
    earlier = torch.rand(B, hkv, ctx - w, device="cuda", generator=gen).argsort(-1)[..., : I - w]
    recent = torch.arange(ctx - w, ctx, device="cuda").expand(B, hkv, w)
    idx = torch.cat([earlier, recent], -1).sort(-1).values.to(torch.int32).contiguous()
    lengths = torch.full((B, hkv), I, device="cuda", dtype=torch.int32)
    out = torch.empty(B, HQ, D, device="cuda", dtype=torch.float16)

    call = partial(sparse_decode_attention, q, k, v, idx, lengths, block_n=block_n, out=out, num_stages=num_stages)
    t_sparse = bench(call)
    # the same call captured in a CUDA graph: kernel time without Python launch overhead
    call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    t_graph = bench(graph.replay)
    # correctness on the GPU against SDPA over the gathered rows
    gi = idx.long()[..., None].expand(-1, -1, -1, D)

    def gathered():
        kg = torch.gather(k, 2, gi)
        vg = torch.gather(v, 2, gi)
        return F.scaled_dot_product_attention(q[:, :, None], kg, vg, enable_gqa=gqa > 1)[:, :, 0]

    ref = gathered()
    rel = float((out.float() - ref.float()).norm() / ref.float().norm())
    t_gather = bench(gathered)
    t_dense = bench(lambda: F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=gqa > 1))
    kv_read = B * hkv * I * D * 2 * 2 + B * hkv * I * 4
    return dict(
        batch=B,
        context=ctx,
        sparsity=s,
        gqa=gqa,
        attended=I,
        time_us=t_sparse * 1e6,
        graph_us=t_graph * 1e6,
        kv_bytes_read=kv_read,
        gbps=kv_read / t_graph / 1e9,
        gather_sdpa_us=t_gather * 1e6,
        dense_sdpa_us=t_dense * 1e6,
        speedup_vs_dense=t_dense / t_sparse,
        graph_speedup_vs_dense=t_dense / t_graph,
        speedup_target=0.7 / (1 - s),
        rel_err_vs_sdpa=rel,
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a corner of the grid only")
    ap.add_argument("--block-n", type=int, default=64)
    ap.add_argument("--num-stages", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--max-points", type=int, default=0, help="stop after this many points (debugging)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    gen = torch.Generator(device="cuda").manual_seed(0)
    ceiling = hbm_ceiling_gbps()
    batches = [1, 8, 32, 128]
    ctxs = [1024, 4096, 16384, 32768]
    sps = [0.5, 0.8, 0.9]
    gqas = [1, 8]
    if args.quick:
        batches, ctxs, sps = [1, 32], [4096, 32768], [0.8]
    rows = []
    t0 = time.time()
    for gqa in gqas:
        for B in batches:
            for ctx in ctxs:
                kv_bytes = 2 * B * (HQ // gqa) * ctx * D * 2
                for s in sps:
                    if kv_bytes > KV_LIMIT_BYTES:
                        rows.append(dict(batch=B, context=ctx, sparsity=s, gqa=gqa, skipped="KV cache over 24 GB"))
                        continue
                    if args.max_points and len(rows) >= args.max_points:
                        continue
                    r = run_point(B, ctx, s, gqa, args.block_n, gen, args.num_stages)
                    r["pct_hbm"] = 100 * r["gbps"] / ceiling
                    rows.append(r)
                torch.cuda.empty_cache()
    hdr = (
        f"{'gqa':>3} {'B':>4} {'ctx':>6} {'s':>4} {'att':>6} {'sparse us':>10} {'graph us':>9} {'GB/s':>7} {'%HBM':>5} "
        f"{'gath+sdpa':>10} {'dense':>9} {'x dense':>7} {'target':>6} {'relerr':>8}"
    )
    lines = [hdr]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['gqa']:>3} {r['batch']:>4} {r['context']:>6} {r['sparsity']:>4}  skipped: {r['skipped']}")
            continue
        lines.append(
            f"{r['gqa']:>3} {r['batch']:>4} {r['context']:>6} {r['sparsity']:>4} {r['attended']:>6} "
            f"{r['time_us']:>10.1f} {r['graph_us']:>9.1f} {r['gbps']:>7.0f} {r['pct_hbm']:>5.1f} "
            f"{r['gather_sdpa_us']:>10.1f} "
            f"{r['dense_sdpa_us']:>9.1f} {r['speedup_vs_dense']:>7.2f} {r['speedup_target']:>6.2f} "
            f"{r['rel_err_vs_sdpa']:>8.1e}"
        )
    table = "\n".join(lines)
    print(table)
    print(
        f"\nmeasured HBM copy ceiling: {ceiling:.0f} GB/s; torch {torch.__version__}, triton {triton.__version__}, "
        f"{torch.cuda.get_device_name(0)}; {time.time() - t0:.0f} s"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {
        "hbm_ceiling_gbps": ceiling,
        "triton": triton.__version__,
        "block_n": args.block_n,
        "num_stages": args.num_stages,
    }
    append_record(out / "kernels.json", rows, extra)
    (out / "kernels_table.md").write_text(
        f"```\n{table}\n```\n\nHBM ceiling {ceiling:.0f} GB/s; {json.dumps(machine())}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
