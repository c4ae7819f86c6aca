"""The device gather's costs (``policy.gather: device``), measured with the real backend's
kernel and launch shape (``alisa.runtime.device_fetch``):

* ``zero_copy_gather_replay``: GPU seconds to read token rows from pinned host memory by
  index over PCIe, by bytes, per row size: KV rows (16 KiB) and layer inputs (8 KiB) of the
  matrix's width, the kernel captured in a CUDA graph and replayed as the executor does
  (older profiles: ``zero_copy_gather``, launched from Python, whose ~41 us dispatch the
  executor never pays). A program copies one row per iteration, so smaller rows keep fewer
  bytes in flight and read slower. The executor's one kernel a layer reads its parts one
  after the other: the simulator adds their times, with the fixed cost once;
* ``zero_copy_issue``: host seconds to issue one layer's gather as the executor does (a
  graph replay on the copy stream between two stream events).

How the gather and the decode layers beside it slow each other is measured in the
executor's own steps (``step_probe``); older profiles carry ``zero_copy_slowdown`` rows
from a stand-in (the decode-layer graphs beside gathers queued on another stream).
``zero_copy_section`` turns the rows into the profile's ``zero_copy``.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from typing import Any

ROW_BYTES = (16384, 8192)
ROWS = (64, 256, 1024, 2400, 4800, 9600)
HOST_ROWS = 1536 * 32


def _replay_s(fn, repeats: int) -> float:
    """Median GPU seconds of fn as the executor issues it: captured in a CUDA graph and
    replayed behind other queued work, so the span holds the kernel and no host dispatch.
    (Until 2026-12-06 the gather was timed as launched from Python, dispatch included:
    a fixed cost of ~41 us a layer that the executor's graph replays do not pay.)"""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # compiles the kernel for these shapes outside the capture
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(200_000)  # ~0.1 ms: the host queues the events and replay behind it
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    del graph
    return statistics.median(ts)


def measure_zero_copy(hardware: dict[str, Any], models: tuple[str, ...], repeats: int = 15) -> list[dict]:
    """Raw rows: the gather by bytes per row size (graph replays), the host's issue.
    The slowdowns beside the decode layers come from ``step_probe`` (the executor's steps)."""
    import torch

    from alisa.kernels.swa_triton import gather_host_layer
    from alisa.runtime.device_fetch import BLOCK, PROGRAMS, WARPS

    def gather(dst, src, idx, width, **kw):
        gather_host_layer((dst, src), idx, width, **kw)  # the executor's kernel, one part

    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    kw = {"programs": PROGRAMS, "block": BLOCK, "num_warps": WARPS}
    rows: list[dict] = []
    idx = None
    dst = src = None
    for rb in ROW_BYTES:
        src = torch.empty(HOST_ROWS, rb // 2, dtype=torch.float16).pin_memory()
        src.view(torch.int16).random_(generator=g)
        for n in ROWS:
            B = 8 if n <= 1024 else 32
            idx = torch.randint(0, HOST_ROWS, (B, n // B), generator=g).to(dev)
            width = torch.tensor([n // B], dtype=torch.int32, device=dev)
            dst = torch.empty(n, rb // 2, dtype=torch.float16, device=dev)
            t = _replay_s(partial(gather, dst, src, idx, width, **kw), repeats)
            rows.append(
                {"op": "zero_copy_gather_replay", "size": float(n * rb), "seconds": t, "row_bytes": rb, "rows": n}
            )
    # the host's issue of one layer's gather: a graph replay between two stream events
    assert idx is not None and dst is not None and src is not None
    side = torch.cuda.Stream()
    gr = torch.cuda.CUDAGraph()
    small_idx = idx[:, :8].contiguous()
    w8 = torch.tensor([8], dtype=torch.int32, device=dev)
    dst = dst[: small_idx.numel()]
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
    del src, dst, gr
    torch.cuda.empty_cache()
    return rows


def zero_copy_section(rows: list[dict]) -> dict[str, Any] | None:
    """The profile's ``zero_copy``: per row size, latency + bytes / rate over its gathers
    (the fixed cost: their median), the median extra share of the decode layers beside a
    gather and of a gather beside the layers, the issue's host microseconds."""
    import numpy as np

    from .fit import fit_latency_bandwidth

    # graph replays (since 2026-12-06) where measured, else Python launches (older profiles)
    g = [r for r in rows if r["op"] == "zero_copy_gather_replay"] or [r for r in rows if r["op"] == "zero_copy_gather"]
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
    # the stand-in probe of older profiles; ``step_probe`` replaces both where it ran
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
