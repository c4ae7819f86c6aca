"""Can the GPU gather a step's fetched token rows straight from pinned host memory?

    python benchmarks/debug/uva_gather.py OUT

Measured on the GPU, for rows of a LLaMA-7B KV token (16 KB) and layer input (8 KB):
the zero-copy gather kernel (``gather_host_rows``) by number of programs; the host path
it would replace (an 8-thread ``index_select`` into pinned staging, then one H2D copy);
and how much a gather running on a second stream slows a chain of decode GEMMs (the
compute it would overlap). Writes OUT/uva_gather.json.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    import torch

    from alisa.calibration.measure import time_cuda
    from alisa.kernels.swa_triton import gather_host_rows

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(8)
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    rows_total = 1536 * 32                      # tokens x sequences of a host KV copy
    res: dict = {"device": torch.cuda.get_device_name(0), "rows": []}
    side = torch.cuda.Stream()

    def gpu_ms(fn, reps: int = 13) -> float:
        return time_cuda(fn, reps)[0] * 1e3

    for row_elems in (8192, 4096):
        src = torch.empty(rows_total, row_elems, dtype=torch.float16).pin_memory()
        src.view(torch.int16).random_(generator=g)
        for B, K in ((8, 100), (32, 150), (32, 300)):
            idx = torch.randint(0, rows_total, (B, K), generator=g).to(dev)
            width = torch.tensor([K], dtype=torch.int32, device=dev)
            dst = torch.empty(B * K, row_elems, dtype=torch.float16, device=dev)
            nbytes = B * K * row_elems * 2
            ref = src[idx.cpu().reshape(-1)].to(dev)
            for progs in (8, 16, 32, 64, 132, 264):
                ms = gpu_ms(lambda: gather_host_rows(dst, src, idx, width, programs=progs))
                ok = torch.equal(dst.view(torch.int16), ref.view(torch.int16))   # random bits: NaNs
                res["rows"].append({"path": "zero-copy", "row_bytes": row_elems * 2, "rows": B * K,
                                    "programs": progs, "ms": ms, "gbps": nbytes / ms / 1e6, "correct": ok})
                print(f"zero-copy row {row_elems * 2:6d} B rows {B * K:5d} programs {progs:4d}: {ms:7.3f} ms "
                      f"{nbytes / ms / 1e6:6.1f} GB/s {'ok' if ok else 'WRONG'}")
            stage = torch.empty(B * K, row_elems, dtype=torch.float16).pin_memory()
            idx_c = idx.cpu().reshape(-1)
            ts = []
            for _ in range(12):
                t0 = time.perf_counter()
                torch.index_select(src, 0, idx_c, out=stage)
                t1 = time.perf_counter()
                dst.copy_(stage, non_blocking=True)
                torch.cuda.synchronize()
                ts.append((t1 - t0, time.perf_counter() - t1))
            gat = statistics.median(t[0] for t in ts[2:]) * 1e3
            cp = statistics.median(t[1] for t in ts[2:]) * 1e3
            res["rows"].append({"path": "host gather + copy", "row_bytes": row_elems * 2, "rows": B * K,
                                "gather_ms": gat, "copy_ms": cp, "gbps": nbytes / (gat + cp) / 1e6})
            print(f"host gather row {row_elems * 2:6d} B rows {B * K:5d}: gather {gat:7.3f} ms, copy {cp:7.3f} ms "
                  f"({nbytes / (gat + cp) / 1e6:6.1f} GB/s end to end)")
        del src
    # interference: decode GEMMs (LLaMA-7B shapes, batch 32) alone and beside a gather
    src = torch.empty(rows_total, 8192, dtype=torch.float16).pin_memory()
    B, K = 32, 300
    idx = torch.randint(0, rows_total, (B, K), generator=g).to(dev)
    width = torch.tensor([K], dtype=torch.int32, device=dev)
    dst = torch.empty(B * K, 8192, dtype=torch.float16, device=dev)
    x = torch.randn(32, 4096, dtype=torch.float16, device=dev)
    ws = [torch.randn(4096, n, dtype=torch.float16, device=dev) for n in (12288, 4096, 22016)]
    w_down = torch.randn(11008, 4096, dtype=torch.float16, device=dev)

    def gemms() -> None:
        for _ in range(6):
            for w in ws:
                torch.matmul(x, w)
            torch.matmul(torch.empty(32, 11008, dtype=torch.float16, device=dev), w_down)

    alone = gpu_ms(gemms)
    for progs, warps, block in ((8, 8, 4096), (16, 8, 4096), (32, 8, 4096), (4, 8, 8192), (8, 8, 8192),
                                (8, 4, 8192), (16, 4, 8192), (16, 2, 8192), (32, 2, 8192), (16, 4, 4096)):
        ts, gs = [], []
        for _ in range(12):
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ga, gb = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(side):
                ga.record()
                gather_host_rows(dst, src, idx, width, programs=progs, num_warps=warps, block=block)
                gb.record()
            a.record()
            gemms()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b))
            gs.append(ga.elapsed_time(gb))
        beside, gms = statistics.median(ts[2:]), statistics.median(gs[2:])
        res["rows"].append({"path": "interference", "programs": progs, "num_warps": warps, "block": block, "gemms_alone_ms": alone,
                            "gemms_beside_ms": beside, "gather_ms": gms,
                            "gather_gbps": B * K * 16384 / gms / 1e6})
        print(f"interference programs {progs:4d} warps {warps} block {block}: GEMMs alone {alone:6.3f} ms, beside a gather {beside:6.3f} ms "
              f"({100 * (beside / alone - 1):+5.1f}%); the gather {gms:6.3f} ms ({B * K * 16384 / gms / 1e6:5.1f} GB/s)")
    (out / "uva_gather.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
