"""The device gather's costs (``policy.gather: device``), measured with the real backend's
kernel and launch shape (``alisa.runtime.device_fetch``):

* ``zero_copy_gather``: GPU seconds to read token rows from pinned host memory by index
  over PCIe, by bytes, per row size: KV rows (16 KiB) and layer inputs (8 KiB) of the
  matrix's width. A program copies one row per iteration, so smaller rows keep fewer bytes
  in flight and read slower (on the H100: ~46 against ~30 GB/s). The executor's one kernel
  a layer reads its parts one after the other: the simulator adds their times, with the
  fixed cost once;
* ``zero_copy_slowdown``: the real backend's decode-layer graphs (``layer_gpu``'s spill
  probe, per family and batch) alone and beside gathers on another stream: the layers'
  extra share of time while the two overlap, and the gathers' (the first of them, which
  end while the layers still run) against a gather alone;
* ``zero_copy_issue``: host seconds to issue one layer's gather as the executor does (a
  graph replay on the copy stream between two stream events).

``zero_copy_section`` turns them into the profile's ``zero_copy``.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from typing import Any

ROW_BYTES = (16384, 8192)
ROWS = (64, 256, 1024, 2400, 4800, 9600)
HOST_ROWS = 1536 * 32
SLOWDOWN_REPEATS = 20


def _gpu_s(fn, repeats: int) -> float:
    """Median seconds of fn on the GPU, the host's dispatch included (as the executor runs it)."""
    from .measure import time_cuda

    return time_cuda(fn, repeats)[0]


def measure_zero_copy(hardware: dict[str, Any], models: tuple[str, ...], repeats: int = 15) -> list[dict]:
    import torch

    from alisa.kernels.swa_triton import gather_host_layer
    from alisa.runtime.device_fetch import BLOCK, PROGRAMS, WARPS

    def gather(dst, src, idx, width, **kw):
        gather_host_layer((dst, src), idx, width, **kw)  # the executor's kernel, one part

    from .layer_gpu import CACHES, _layer_probes, _time_layers

    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    kw = {"programs": PROGRAMS, "block": BLOCK, "num_warps": WARPS}
    rows: list[dict] = []
    srcs = {}
    for rb in ROW_BYTES:
        src = torch.empty(HOST_ROWS, rb // 2, dtype=torch.float16).pin_memory()
        src.view(torch.int16).random_(generator=g)
        srcs[rb] = src
        for n in ROWS:
            B = 8 if n <= 1024 else 32
            idx = torch.randint(0, HOST_ROWS, (B, n // B), generator=g).to(dev)
            width = torch.tensor([n // B], dtype=torch.int32, device=dev)
            dst = torch.empty(n, rb // 2, dtype=torch.float16, device=dev)
            t = _gpu_s(partial(gather, dst, src, idx, width, **kw), repeats)
            rows.append({"op": "zero_copy_gather", "size": float(n * rb), "seconds": t, "row_bytes": rb, "rows": n})
    # the decode layers' graphs beside gathers that outlast them, on another stream
    src = srcs[ROW_BYTES[0]]
    idx = torch.randint(0, HOST_ROWS, (32, 300), generator=g).to(dev)
    width = torch.tensor([300], dtype=torch.int32, device=dev)
    dst = torch.empty(32 * 300, ROW_BYTES[0] // 2, dtype=torch.float16, device=dev)
    one_s = _gpu_s(lambda: gather(dst, src, idx, width, **kw), 3)
    side = torch.cuda.Stream()

    g0, g1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    timed_gathers = [1]

    def beside(seconds: float) -> None:
        # ``seconds`` is 1.5x the layers' span: the first k gathers (0.6 of the span at
        # the alone rate) end while the layers still run unless slowed over 1.67x
        k = max(1, int(0.4 * seconds / one_s))
        timed_gathers[0] = k
        with torch.cuda.stream(side):
            g0.record(side)
            for i in range(int(seconds / one_s) + 2):
                gather(dst, src, idx, width, **kw)
                if i == k - 1:
                    g1.record(side)

    for family, name, _, B, sc in _layer_probes(
        hardware, models, {"spill": CACHES["spill"]}, 64, "zero-copy-slowdown-probe"
    ):
        alone = _time_layers(sc, SLOWDOWN_REPEATS)
        near = _time_layers(sc, SLOWDOWN_REPEATS, beside)
        g1.synchronize()
        rows.append(
            {
                "op": "zero_copy_slowdown",
                "size": float(B),
                "family": family,
                "model": name,
                "seconds": alone,
                "seconds_beside": near,
                "gather_seconds": one_s,
                "gather_seconds_beside": g0.elapsed_time(g1) / 1e3 / timed_gathers[0],
            }
        )
    # the host's issue of one layer's gather: a graph replay between two stream events
    gr = torch.cuda.CUDAGraph()
    small_idx = idx[:, :8].contiguous()
    w8 = torch.tensor([8], dtype=torch.int32, device=dev)
    gather(dst, src, small_idx, w8, **kw)
    torch.cuda.synchronize()
    with torch.cuda.graph(gr):
        gather(dst, src, small_idx, w8, **kw)
    e_in, e_out = torch.cuda.Event(), torch.cuda.Event()
    compute = torch.cuda.current_stream()
    n_iss = 200
    ts = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n_iss):
            e_in.record(compute)
            torch.cuda.set_stream(side)
            side.wait_event(e_in)
            gr.replay()
            e_out.record(side)
            torch.cuda.set_stream(compute)
            compute.wait_event(e_out)
        ts.append((time.perf_counter() - t0) / n_iss)
        torch.cuda.synchronize()
    rows.append({"op": "zero_copy_issue", "size": 1.0, "seconds": statistics.median(ts)})
    srcs.clear()
    torch.cuda.empty_cache()
    return rows


def zero_copy_section(rows: list[dict]) -> dict[str, Any] | None:
    """The profile's ``zero_copy``: per row size, latency + bytes / rate over its gathers
    (the fixed cost: their median), the median extra share of the decode layers beside a
    gather and of a gather beside the layers, the issue's host microseconds."""
    import numpy as np

    from .fit import fit_latency_bandwidth

    g = [r for r in rows if r["op"] == "zero_copy_gather"]
    by: dict[int, list[dict]] = {}
    for r in g:
        by.setdefault(int(r["row_bytes"]), []).append(r)
    fits = {
        rb: fit_latency_bandwidth(np.array([r["size"] for r in rs]), np.array([r["seconds"] for r in rs]))
        for rb, rs in by.items()
        if len(rs) >= 2
    }
    if not fits:
        return None
    probes = [r for r in rows if r["op"] == "zero_copy_slowdown"]
    slow = [max(0.0, r["seconds_beside"] / r["seconds"] - 1.0) for r in probes]
    g_slow = [
        max(0.0, r["gather_seconds_beside"] / r["gather_seconds"] - 1.0) for r in probes if r.get("gather_seconds")
    ]  # measured since 2026-11-23's thirteenth run
    issue = [r["seconds"] for r in rows if r["op"] == "zero_copy_issue"]
    return {
        "fixed_us": round(statistics.median(f.latency_s for f in fits.values()) * 1e6, 2),
        "gbps": round(fits[max(fits)].rate_per_s / 1e9, 2),
        "row_gbps": {rb: round(f.rate_per_s / 1e9, 2) for rb, f in sorted(fits.items())},
        "compute_slowdown": round(statistics.median(slow), 3) if slow else 0.0,
        "gather_slowdown": round(statistics.median(g_slow), 3) if g_slow else 0.0,
        "issue_us": round(issue[0] * 1e6, 2) if issue else 0.0,
        "fit_rel_error": round(statistics.mean(f.mean_rel_error for f in fits.values()), 4),
    }
