"""Why does the device gather run at half speed in some Phase III plans?

    python benchmarks/debug/mixed_gather.py OUT micro      # the gather kernels alone (~1 min)
    python benchmarks/debug/mixed_gather.py OUT run        # the executor, fixed ratios (~4 min)
    python benchmarks/debug/mixed_gather.py OUT micro run --smoke   # tiny, on the CPU: the script works

In the twelfth run (OPT-6.7B b32 g1024, device gather; a gather-regimes probe, in git history)
the steps ran 1.8-2.2x the simulated time while the plan fetched a few KV rows and many
inputs x per sequence and layer ((kv, x) = (5, 46), (8, 47), (7, 62), (15, 61), (4, 78)),
and 1.03-1.10x at (16, 46), (20, 31) and (0, 78); the switch is step-exact at each change
of the plan's ratio, and two runs agree to a few percent. The traced layers put it in the
gather: 13-15 GB/s where calibration gives ~30, with the compute on time.

``micro``: the executor's gather kernels (``DeviceFetcher``'s launch shape) on host
arrays shaped as that run's (OPT-6.7B width, 32 sequences, 1536 positions, 4 layers), row
ids drawn as a selection's (distinct tokens per sequence below the window), at each (kv,
x) regime seen: one kernel per part against one fused kernel (``gather_host_layer``), 8
against 16 programs; the KV rows uniform or among the newest tokens; alone, beside
decode- and recompute-shaped GEMMs, and beside a host thread writing rows (the
write-through's flush). If the slow regimes are slow here too, the kernel or the link is
the cause; if not, something in the executor's step is.

``run``: the executor itself on OPT-6.7B b32, prompt 1280, every step traced, the
recompute ratio fixed (0.6, 0.8, 0.9, 0.95, 1.0: (kv, x) = (29, 43), (15, 58), (7, 65),
(4, 69), (0, 72)), with the default launch (one kernel a layer since the probe's first
run) and, at 0.9, one kernel per part / 16 programs / a high-priority copy stream
(``RealOptions``); per run the step time against the simulator's and the gather's GB/s by
layer.

First run (lent H100, 2026-11-23 12:56 UTC, ``benchmarks/results/mixed-gather/``, one
kernel per part then the default): ``micro`` did not reproduce the slow pairs (29-33 GB/s
at every pair, alone); ``run`` did (ratio 0.8, 0.9, 0.95: 1.81-1.98x the simulated step,
the gather at 11.7-15.4 GB/s; 0.6 and 1.0: 1.13x and 1.09x), and the fused kernel brought
ratio 0.9 to 1.09x (26.7 GB/s); 16 programs 1.25x, the high-priority stream no change.

Prints tables and writes OUT/mixed_gather_{micro,run}.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REGIMES = ((20, 31), (8, 31), (16, 46), (12, 47), (5, 46), (3, 62), (15, 60), (11, 64), (4, 77), (9, 80), (0, 78))


def micro(out: Path, smoke: bool) -> list[dict[str, Any]]:
    import torch

    from alisa.kernels.swa_triton import gather_host_layer, gather_host_rows
    from alisa.runtime.device_fetch import BLOCK, PROGRAMS, WARPS

    cuda = not smoke
    dev = torch.device("cuda" if cuda else "cpu")
    g = torch.Generator().manual_seed(0)
    # OPT-6.7B: a KV row 8192 fp16 values, an input x 4096
    L, N, B, n, w, h = (4, 1536, 32, 1300, 130, 4096) if not smoke else (2, 48, 2, 44, 4, 16)
    regimes = REGIMES if not smoke else tuple((min(k, 3), min(x, 6)) for k, x in REGIMES[:3])

    def host(*shape: int) -> torch.Tensor:
        t = torch.empty(*shape, dtype=torch.float16)
        return t.pin_memory() if cuda else t.random_(generator=g)

    host_kv, host_x = host(L, N * B, 2 * h), host(L, N * B, h)
    K = max(k + x for k, x in regimes)
    land_kv = torch.empty(B * K, 2 * h, dtype=torch.float16, device=dev)
    land_x = torch.empty(B * K, h, dtype=torch.float16, device=dev)
    dt = torch.float16 if cuda else torch.float32
    dec_x = torch.randn(B, h, dtype=dt, device=dev)
    dec_w = [torch.randn(h, m * h // 4096, dtype=dt, device=dev) for m in (12288, 4096, 16384)]
    rec_x = torch.randn(B * 64, h, dtype=dt, device=dev)
    rec_w = torch.randn(h, 2 * h, dtype=dt, device=dev)
    staging = host(B, 2 * h)

    newest = min(64, (n - w) // 2)

    def ids(nk: int, nx: int, recent: bool) -> tuple[torch.Tensor, torch.Tensor]:
        kv, x = torch.zeros(L, B, K, dtype=torch.int64), torch.zeros(L, B, K, dtype=torch.int64)
        for l in range(L):
            for b in range(B):
                if recent:  # KV rows among the newest host tokens, x rows among the others
                    kt = n - w - 1 - torch.randperm(newest, generator=g)[:nk]
                    xt = torch.randperm(n - w - newest, generator=g)[:nx]
                else:
                    t = torch.randperm(n - w, generator=g)[: nk + nx]
                    kt, xt = t[nx:], t[:nx]
                kv[l, b, :nk] = kt * B + b
                x[l, b, :nx] = xt * B + b
        return kv.to(dev), x.to(dev)

    def gemms() -> None:
        for _ in range(6):
            torch.matmul(rec_x, rec_w)
            for m in dec_w:
                torch.matmul(dec_x, m)

    stop = threading.Event()

    def writer() -> None:  # the flush: rows of the newest token into every layer's host copy
        pos = 0
        while not stop.is_set():
            t = n + pos % (N - n)
            for l in range(L):
                host_kv[l, t * B : (t + 1) * B].copy_(staging)
            pos += 1

    def gather_layers(
        fused: bool, kv_ids: torch.Tensor, wk: torch.Tensor, x_ids: torch.Tensor, wx: torch.Tensor, kw: dict[str, Any]
    ) -> None:
        for l in range(L):
            if fused:
                gather_host_layer(
                    (land_kv, host_kv[l]), kv_ids[l], wk, x=(land_x, host_x[l]), x_idx=x_ids[l], x_width=wx, **kw
                )
            else:
                gather_host_rows(land_kv, host_kv[l], kv_ids[l], wk, **kw)
                gather_host_rows(land_x, host_x[l], x_ids[l], wx, **kw)

    rows: list[dict[str, Any]] = []
    side = torch.cuda.Stream() if cuda else None
    for nk, nx in regimes:
        for recent in (False, True):
            if recent and nk == 0:
                continue
            kv_ids, x_ids = ids(nk, nx, recent)
            wk = torch.tensor([nk], dtype=torch.int32, device=dev)
            wx = torch.tensor([nx], dtype=torch.int64, device=dev)
            nbytes = L * B * (nk * 2 + nx) * h * 2
            variants: list[tuple[str, bool, int, str]] = [
                ("per-part", False, PROGRAMS, "idle"),
                ("fused", True, PROGRAMS, "idle"),
                ("per-part", False, 16, "idle"),
            ]
            if not recent:
                variants += [
                    ("per-part", False, PROGRAMS, "GEMMs"),
                    ("fused", True, PROGRAMS, "GEMMs"),
                    ("per-part", False, PROGRAMS, "writer"),
                ]
            for kind, fused, progs, beside in variants:
                kw = {"programs": progs, "block": BLOCK, "num_warps": WARPS}

                th = None
                if beside == "writer":
                    stop.clear()
                    th = threading.Thread(target=writer, daemon=True)
                    th.start()
                ts = []
                for rep in range(8 if cuda else 3):
                    if cuda:
                        torch.cuda.synchronize()
                    if beside == "GEMMs":
                        gemms()
                    if cuda:
                        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        with torch.cuda.stream(side):
                            a.record()
                            gather_layers(fused, kv_ids, wk, x_ids, wx, kw)
                            b.record()
                    else:
                        t0 = time.perf_counter()
                        gather_layers(fused, kv_ids, wk, x_ids, wx, kw)
                        t1 = time.perf_counter()
                    if beside == "GEMMs":
                        gemms()
                    if cuda:
                        torch.cuda.synchronize()
                    if rep >= 2 or not cuda:
                        ts.append((a.elapsed_time(b) if cuda else 1e3 * (t1 - t0)) / L)
                if th is not None:
                    stop.set()
                    th.join()
                if smoke:  # the last layer's rows landed where the ids say
                    assert torch.equal(land_kv[: B * nk], host_kv[L - 1][kv_ids[L - 1][:, :nk].reshape(-1)])
                    assert torch.equal(land_x[: B * nx], host_x[L - 1][x_ids[L - 1][:, :nx].reshape(-1)])
                ms = statistics.median(ts)
                row = {
                    "kv": nk,
                    "x": nx,
                    "kv_rows": "newest" if recent else "uniform",
                    "kernels": kind,
                    "programs": progs,
                    "beside": beside,
                    "layer_ms": ms,
                    "gbps": nbytes / L / ms / 1e6,
                }
                rows.append(row)
                print(
                    f"(kv {nk:2d}, x {nx:2d}) kv rows {row['kv_rows']:7s} {kind:8s} p{progs:<2d} {beside:6s}: "
                    f"{ms:6.3f} ms a layer {row['gbps']:5.1f} GB/s",
                    flush=True,
                )
    return rows


TINY = (
    "{name: tiny-opt, family: opt, num_layers: 2, hidden_size: 64, num_heads: 4, num_kv_heads: 4, "
    "head_dim: 16, ffn_dim: 256, vocab_size: 256, activation: relu, norm: layernorm, max_positions: 256}"
)


def run(out: Path, smoke: bool) -> list[dict[str, Any]]:
    from alisa.runtime.executor import RealExecutor, RealOptions
    from alisa.runtime.run import release_gpu
    from alisa.sim.runner import simulate
    from alisa.sim.scenario import load_scenario

    gen = 24 if not smoke else 8
    size = (
        ["model=opt-6.7b", "workload.batch_size=32", "workload.prompt_len=1280"]
        if not smoke
        else [f"model={TINY}", "workload.batch_size=2", "workload.prompt_len=40", "policy.gpu_kv_budget_tokens=20"]
    )
    rows: list[dict[str, Any]] = []
    plain: dict[str, Any] = {}
    variants: list[tuple[str, dict[str, Any]]] = [
        ("default", plain),
        ("per-part", {"gather_fused": False}),
        ("programs16", {"gather_programs": 16}),
        ("priority-1", {"copy_stream_priority": -1}),
    ]
    for ratio in (0.6, 0.8, 0.9, 0.95, 1.0):
        sc = load_scenario(
            "scenarios/validation/alisa-device.yaml",
            [*size, f"workload.gen_len={gen}", f"policy.recompute_ratio={ratio}", "sweep=null"],
        )
        _, sim = simulate(sc)
        sim_steps = {s.step: s.end_s - s.start_s for s in sim.steps if s.phase != "prefill"}
        for name, kw in variants if ratio == 0.9 else variants[:1]:
            r = RealExecutor(
                sc, RealOptions(layer_trace_steps=gen, trace_later=0, device="cpu" if smoke else None, **kw)
            ).run()
            steps = [s for s in r.er.steps if s.phase != "prefill"][4:]
            real_ms = statistics.median(1e3 * (s.end_s - s.start_s) for s in steps)
            sim_ms = statistics.median(1e3 * sim_steps[s.step] for s in steps)
            h2d = [
                (e[3], e[4].get("bytes", 0))
                for e in r.er.events
                if e[0] == "H2D" and e[1] != "L0" and e[4].get("step", -1) >= 4
            ]
            gbps = statistics.median(b / d / 1e9 for d, b in h2d if d > 0) if h2d else 0.0
            phases = sorted({s.phase for s in steps})
            row = {
                "ratio": ratio,
                "variant": name,
                "phases": phases,
                "real_step_ms": real_ms,
                "sim_step_ms": sim_ms,
                "gather_gbps_L1plus": gbps,
            }
            rows.append(row)
            print(
                f"ratio {ratio:.2f} {name:10s} {'/'.join(phases):6s}: real {real_ms:6.2f} ms, sim {sim_ms:6.2f} ms "
                f"({real_ms / sim_ms:4.2f}x), gather {gbps:5.1f} GB/s (layers 1+)",
                flush=True,
            )
            del r
            release_gpu()
    return rows


def main() -> int:
    import torch

    args = sys.argv[1:]
    smoke = "--smoke" in args
    args = [a for a in args if a != "--smoke"]
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    parts: dict[str, Callable[[Path, bool], list[dict[str, Any]]]] = {"micro": micro, "run": run}
    for part in args[1:] or ["micro"]:
        rows = parts[part](out, smoke)
        device = "cpu (smoke)" if smoke else torch.cuda.get_device_name(0)
        (out / f"mixed_gather_{part}.json").write_text(
            json.dumps({"device": device, "command": " ".join(sys.argv), "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
