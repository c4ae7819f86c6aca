"""Where ALISA's host fetch spends its time on a real GPU.

    python benchmarks/debug/fetch_probe.py OUT [micro,pipeline]

micro: CPU gathers of KV rows from a large pinned array (cold, scattered rows, as the
executor's host copy) by thread count, alone and while H2D copies stream; whether a
non_blocking H2D from pinned staging returns at once.
pipeline: the executor's fetch worker per layer (host clock: index work, gather, wait for
the landing buffer, copy issue) and the GPU lanes (CUDA events), at a few batch sizes,
contexts and worker thread counts. Writes OUT/fetch_probe.json.
"""
from __future__ import annotations

import json
import statistics as st
import sys
import threading
import time
from pathlib import Path

import torch


def med(xs: list[float]) -> float:
    return st.median(xs) if xs else float("nan")


def micro(out: dict) -> None:
    row_b = 16384                                       # LLaMA-7B fp16 K+V row of one token and layer
    R = (4 << 30) // row_b                              # 4 GiB source: far beyond any LLC
    t = time.perf_counter()
    src = torch.empty(R, row_b // 2, dtype=torch.float16, pin_memory=True)
    src.view(torch.int16).fill_(1)
    print(f"alloc+touch 4 GiB pinned: {time.perf_counter() - t:.1f} s", flush=True)
    stage = torch.empty(4096, row_b // 2, dtype=torch.float16, pin_memory=True)
    land = torch.empty(4096, row_b // 2, dtype=torch.float16, device="cuda")
    bg_src = torch.empty(32 << 20, dtype=torch.uint8, pin_memory=True)
    bg_dst = torch.empty(32 << 20, dtype=torch.uint8, device="cuda")
    s2 = torch.cuda.Stream()
    res = {}
    for rows in (480, 1984):
        n_b = rows * row_b
        for th in (1, 2, 4, 8, 16):
            torch.set_num_threads(th)
            alone, loaded = [], []
            for rep in range(12):
                idx = torch.randint(0, R, (rows,))
                t0 = time.perf_counter()
                torch.index_select(src, 0, idx, out=stage[:rows])
                alone.append(time.perf_counter() - t0)
            # the same while another thread keeps the H2D engine busy
            stop = threading.Event()
            h2d_n = [0]

            def pump() -> None:
                with torch.cuda.stream(s2):
                    while not stop.is_set():
                        bg_dst.copy_(bg_src, non_blocking=True)
                        s2.synchronize()
                        h2d_n[0] += 1
            thr = threading.Thread(target=pump)
            t_load0 = time.perf_counter()
            thr.start()
            for rep in range(12):
                idx = torch.randint(0, R, (rows,))
                t0 = time.perf_counter()
                torch.index_select(src, 0, idx, out=stage[:rows])
                loaded.append(time.perf_counter() - t0)
            stop.set()
            thr.join()
            h2d_gbps = h2d_n[0] * (32 << 20) / (time.perf_counter() - t_load0) / 1e9
            key = f"gather rows={rows} threads={th}"
            res[key] = {"alone_gbps": n_b / med(alone) / 1e9, "with_h2d_gbps": n_b / med(loaded) / 1e9,
                        "h2d_gbps_meanwhile": h2d_gbps}
            print(key, {k: round(v, 1) for k, v in res[key].items()}, flush=True)
    torch.set_num_threads(16)
    # does a non_blocking copy from pinned staging return before the copy ends?
    for rows in (480, 1984):
        calls, gpu = [], []
        for rep in range(10):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(s2):
                e0.record(s2)
                t0 = time.perf_counter()
                land[:rows].copy_(stage[:rows], non_blocking=True)
                calls.append(time.perf_counter() - t0)
                e1.record(s2)
            e1.synchronize()
            gpu.append(e0.elapsed_time(e1) / 1e3)
        key = f"h2d rows={rows}"
        res[key] = {"host_call_us": med(calls) * 1e6, "gpu_us": med(gpu) * 1e6, "gbps": rows * row_b / med(gpu) / 1e9}
        print(key, {k: round(v, 1) for k, v in res[key].items()}, flush=True)
    out["micro"] = res
    del src, stage, land, bg_src, bg_dst


def pipeline(out: dict) -> None:
    from alisa.calibration.host_issue import time_methods
    from alisa.runtime.executor import RealExecutor, RealOptions
    from alisa.runtime.run import release_gpu
    from alisa.sim.runner import simulate
    from alisa.sim.scenario import expand_sweep

    res = {}
    for batch, prompt, threads in ((32, 512, None), (32, 512, 16), (32, 1400, None), (8, 512, None)):
        sweep = json.dumps({"model": ["llama-7b"], "workload.batch_size": [batch], "workload.gen_len": [16],
                            "workload.prompt_len": [prompt]})
        (_, sc), = expand_sweep("scenarios/validation/alisa.yaml", [f"sweep={sweep}"])
        _, er_sim = simulate(sc)
        ex = RealExecutor(sc, RealOptions(fetch_threads=threads, layer_trace_steps=100))
        spent = time_methods(ex.slots, ("select", "resolve", "write_through_step"))
        spent.update(time_methods(ex.fetcher, ("wait",)))
        spent.update(time_methods(ex, ("_decode",)))
        fetched: list = []
        orig_wait = ex.fetcher.wait

        def wait(l, _w=orig_wait):  # type: ignore[no-untyped-def]
            f = _w(l)
            fetched.append(f)
            return f
        ex.fetcher.wait = wait
        run = ex.run()
        del ex
        release_gpu()
        marks = [f.host_marks for f in fetched[4 * 32:] if f.host_marks]   # past the rehearsal
        parts = {
            "index_us": med([m[1] - m[0] for m in marks]) * 1e6,
            "gather_us": med([m[2] - m[1] for m in marks]) * 1e6,
            "wait_landing_us": med([m[3] - m[2] for m in marks]) * 1e6,
            "copy_issue_us": med([m[4] - m[3] for m in marks]) * 1e6,
            "job_gap_us": med([b[0] - a[4] for a, b in zip(marks, marks[1:]) if 0 < b[0] - a[4] < 0.05]) * 1e6,
        }
        ev = run.er.events
        for lane, key in (("GPU compute", "gpu_layer_us"), ("H2D", "h2d_layer_us")):
            parts[key] = med([e[3] for e in ev if e[0] == lane and e[1].startswith("L") and e[4].get("step", 0) >= 2]) * 1e6
        dec = [r for r in run.er.steps if r.phase != "prefill"][2:]
        parts["step_ms"] = med([r.time_s for r in dec]) * 1e3
        parts["sim_step_ms"] = med([r.time_s for r in er_sim.steps if r.phase != "prefill"]) * 1e3
        parts["h2d_mb_per_layer"] = med([r.h2d_bytes for r in dec]) / 32 / 1e6
        n_steps = len(run.er.steps) - 1 + 3
        for k, v in spent.items():
            parts[f"main_{k}_ms"] = sum(v) / n_steps * 1e3
        key = f"b{batch} P{prompt} threads={threads}"
        res[key] = parts
        print(key, {k: round(v, 1) for k, v in parts.items()}, flush=True)
    out["pipeline"] = res


def main() -> int:
    dest = Path(sys.argv[1])
    dest.mkdir(parents=True, exist_ok=True)
    which = sys.argv[2].split(",") if len(sys.argv) > 2 else ["micro", "pipeline"]
    out: dict = {"threads_default": torch.get_num_threads(), "device": torch.cuda.get_device_name(0)}
    print(out, flush=True)
    if "micro" in which:
        micro(out)
    if "pipeline" in which:
        pipeline(out)
    if "dense" in which:
        dense(out)
    (dest / "fetch_probe.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
