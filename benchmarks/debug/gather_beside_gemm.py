"""Does the device gather slow down beside big GEMMs on the compute stream, and does a
high-priority copy stream or one kernel per layer (instead of one per part) help?

    python benchmarks/debug/gather_beside_gemm.py OUT

The twelfth run's batch-32 Phase III steps gathered at 13-15 GB/s where a layer fetched KV
rows and inputs x (two kernels) beside the recompute's GEMM, against 31-46 GB/s that
calibration times on an idle GPU (docs/validation.md, "Twelfth run"). Here, with the
executor's kernel shape (``runtime/device_fetch.py``), for a Phase III layer of
OPT-6.7B / LLaMA-7B width at batch 32 (KV rows 16 KiB, inputs x 8 KiB): the gather's time
alone; beside a stream of recompute-shaped GEMMs ([rows, 4096] x [4096, 8192]) and of
decode-layer GEMMs; as one kernel (x only) and as two (KV, then x); on a normal and on a
high-priority stream. Prints a table and writes OUT/gather_beside_gemm.json.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main() -> int:
    import torch

    from alisa.kernels.swa_triton import gather_host_rows
    from alisa.runtime.device_fetch import BLOCK, PROGRAMS, WARPS

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    kw = {"programs": PROGRAMS, "block": BLOCK, "num_warps": WARPS}
    B, host_rows = 32, 1536 * 32
    kv_src = torch.empty(host_rows, 8192, dtype=torch.float16).pin_memory()
    x_src = torch.empty(host_rows, 4096, dtype=torch.float16).pin_memory()
    parts = {"kv": (kv_src, 10), "x": (x_src, 60)}      # rows per sequence: a ratio-0.85 layer
    bufs = {}
    for name, (src, w) in parts.items():
        idx = torch.randint(0, host_rows, (B, w), generator=g).to(dev)
        width = torch.tensor([w], dtype=torch.int32, device=dev)
        dst = torch.empty(B * w, src.shape[1], dtype=torch.float16, device=dev)
        bufs[name] = (dst, src, idx, width)
    rec_x = torch.randn(B * 64, 4096, dtype=torch.float16, device=dev)
    rec_w = torch.randn(4096, 8192, dtype=torch.float16, device=dev)
    dec_x = torch.randn(B, 4096, dtype=torch.float16, device=dev)
    dec_ws = [torch.randn(4096, n, dtype=torch.float16, device=dev) for n in (12288, 4096, 22016)]

    def recompute_gemms() -> None:
        for _ in range(40):
            torch.matmul(rec_x, rec_w)

    def decode_gemms() -> None:
        for _ in range(40):
            for w in dec_ws:
                torch.matmul(dec_x, w)

    def gather(which: tuple[str, ...]) -> None:
        for name in which:
            gather_host_rows(*bufs[name], **kw)

    rows = []
    for prio_name, prio in (("normal", 0), ("high", -1)):
        side = torch.cuda.Stream(priority=prio)
        for which in (("x",), ("kv", "x")):
            nbytes = sum(bufs[n][0].numel() * 2 for n in which)
            for beside_name, beside in (("idle", None), ("recompute GEMMs", recompute_gemms),
                                        ("decode GEMMs", decode_gemms)):
                ts = []
                for rep in range(12):
                    torch.cuda.synchronize()
                    if beside is not None:
                        beside()                 # the compute stream is busy before the gather arrives
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    with torch.cuda.stream(side):
                        a.record()
                        gather(which)
                        b.record()
                    if beside is not None:
                        beside()
                    torch.cuda.synchronize()
                    if rep >= 2:
                        ts.append(a.elapsed_time(b))
                ms = statistics.median(ts)
                rows.append({"stream": prio_name, "kernels": "+".join(which), "beside": beside_name,
                             "ms": ms, "gbps": nbytes / ms / 1e6})
                print(f"{prio_name:6s} stream  {'+'.join(which):5s}  beside {beside_name:16s}: "
                      f"{ms:7.3f} ms  {nbytes / ms / 1e6:5.1f} GB/s")
    (out / "gather_beside_gemm.json").write_text(json.dumps({"device": torch.cuda.get_device_name(0),
                                                             "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
