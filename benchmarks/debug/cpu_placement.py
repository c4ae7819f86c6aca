"""Is the lent machine's host speed a property of the vCPU a thread runs on, or of time?

    python benchmarks/debug/cpu_placement.py OUT

The real backend's ALISA steps are host-bound, and the same host work took 14-22 ms per
step depending on the process (docs/validation.md, tenth matrix). Placement on a VM's
vCPUs is one per-process draw: a vCPU whose physical core is shared (with a sibling
vCPU or another guest) runs slower, and a process's main thread mostly stays where it
started. This measures, on the machine it runs on:

* ``per_cpu``: a fixed pure-Python workload and a CUDA launch loop with the calling thread
  pinned to each vCPU in turn, five interleaved rounds (median per vCPU);
* ``pairs``: the Python workload on vCPU i while a spinning process sits on vCPU j, for
  every pair (slowdown against per_cpu: a hidden sibling shows as a large one);
* ``steal``: /proc/stat's steal ticks per vCPU over the whole script;
* ``processes``: fresh processes, unpinned, each timing the Python workload and an 8-thread
  row gather where they land (which vCPU the main thread was on);
* ``probe``: the calibration's narrow-model host probe at batch 32 (own host ms per step,
  ``benchmarks/debug/host_own_real_vs_probe.py``'s child), in alternating processes,
  unpinned, rotating the main thread over the vCPUs (``ALISA_ROTATE_CPU=1``), and with
  ``CPU_PLACEMENT_PIN`` placement (default: main thread on vCPU 0, the
  OpenMP threads on 1, 2, ... through GOMP_CPU_AFFINITY=0-15).

Results: OUT/cpu_placement.json; the log is the table.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def py_work(n: int = 40000) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += (i * i) % 7
    return time.perf_counter() - t0


def cuda_launches(n: int = 400) -> float:
    import torch

    if not torch.cuda.is_available():
        return float("nan")
    a = torch.zeros(16, device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        a.add_(1.0)
    t = time.perf_counter() - t0
    torch.cuda.synchronize()
    return t / n


def gather_s(rows: int = 554, reps: int = 30) -> float:
    """8-thread index_select of 16 KB rows (batch 32's 8.9 MB a layer) from a 2 GB pinned
    host copy into pinned staging, as the real backend's fetch does; median seconds."""
    import torch

    torch.set_num_threads(8)
    pin = torch.cuda.is_available()
    src = torch.empty((2 << 30) // (16 << 10), 8192, dtype=torch.float16, pin_memory=pin)
    src.view(torch.int16).fill_(1)
    dst = torch.empty(rows, 8192, dtype=torch.float16, pin_memory=pin)
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(reps):
        idx = torch.randint(0, src.shape[0], (rows,), generator=g)
        t0 = time.perf_counter()
        torch.index_select(src, 0, idx, out=dst)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def thread_cpu() -> int:
    try:
        return int(Path("/proc/thread-self/stat").read_text().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return -1


def steal_ticks() -> dict[str, int]:
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        f = line.split()
        if f[0].startswith("cpu") and len(f) > 8:
            out[f[0]] = int(f[8])
    return out


def per_cpu(cpus: list[int]) -> dict[int, dict[str, float]]:
    py: dict[int, list[float]] = {c: [] for c in cpus}
    cu: dict[int, list[float]] = {c: [] for c in cpus}
    cuda_launches(50)
    for _ in range(5):
        for c in cpus:
            os.sched_setaffinity(0, {c})
            py_work(2000)
            py[c].append(py_work())
            cu[c].append(cuda_launches())
    os.sched_setaffinity(0, set(cpus))
    return {c: {"py_ms": 1e3 * statistics.median(py[c]), "py_spread": (max(py[c]) - min(py[c])) / statistics.median(py[c]),
                "launch_us": 1e6 * statistics.median(cu[c])} for c in cpus}


def pairs(cpus: list[int], base: dict[int, dict[str, float]]) -> dict[str, float]:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    out = {}
    try:
        for j in cpus:
            os.sched_setaffinity(spin.pid, {j})
            time.sleep(0.02)
            for i in cpus:
                if i == j:
                    continue
                os.sched_setaffinity(0, {i})
                t = min(py_work(20000) for _ in range(2)) * 2
                out[f"{i},{j}"] = 1e3 * t / base[i]["py_ms"]
    finally:
        spin.kill()
        os.sched_setaffinity(0, set(cpus))
    return out


def child_micro() -> dict[str, float]:
    py = statistics.median(py_work() for _ in range(5))
    return {"cpu": thread_cpu(), "py_ms": 1e3 * py, "launch_us": 1e6 * cuda_launches(), "gather_us": 1e6 * gather_s(),
            "cpu_after": thread_cpu()}


def run_child(args: list[str], env: dict[str, str]) -> dict | None:
    p = subprocess.run([sys.executable, *args], env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        print(f"child {args} failed:\n{p.stderr[-2000:]}", flush=True)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    if sys.argv[1] == "--micro":
        print(json.dumps(child_micro()))
        return 0
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cpus = sorted(os.sched_getaffinity(0))
    s0 = steal_ticks()
    res["per_cpu"] = per_cpu(cpus)
    print("vCPU   py ms  spread  launch us", flush=True)
    for c, r in res["per_cpu"].items():
        print(f"{c:4d} {r['py_ms']:7.3f} {r['py_spread']:7.2f} {r['launch_us']:9.2f}", flush=True)
    res["pairs"] = pairs(cpus, res["per_cpu"])
    worst = sorted(res["pairs"].items(), key=lambda kv: -kv[1])[:12]
    print("slowest pairs (i on, j spinning: slowdown):", " ".join(f"{k}:{v:.2f}" for k, v in worst), flush=True)
    print("median pair slowdown", f"{statistics.median(res['pairs'].values()):.3f}", flush=True)
    res["processes"] = []
    for _ in range(int(os.environ.get("CPU_PLACEMENT_PROCS", "8"))):
        r = run_child([__file__, "--micro"], {})
        if r:
            res["processes"].append(r)
            print(f"process: main on vCPU {r['cpu']:2d}->{r['cpu_after']:2d}  py {r['py_ms']:6.3f} ms  "
                  f"launch {r['launch_us']:5.2f} us  gather {r['gather_us']:7.1f} us", flush=True)
    pin = {"GOMP_CPU_AFFINITY": os.environ.get("CPU_PLACEMENT_PIN", "0-15")}
    res["probe"] = []
    probe = str(HERE / "host_own_real_vs_probe.py")
    for _ in range(int(os.environ.get("CPU_PLACEMENT_PROBE_PAIRS", "4"))):
        for name, env in (("free", {}), ("rotate", {"ALISA_ROTATE_CPU": "1"}), ("pinned", pin))[:int(os.environ.get("CPU_PLACEMENT_VARIANTS", "3"))]:
            r = run_child([probe, "--child", "narrow", "32"], env)
            if r:
                r["variant"] = name
                res["probe"].append(r)
                print(f"probe {name:6s} vCPU {r.get('main_cpu', -1):2d} own {1e3 * r['own_seconds']:6.2f} ms  fetch {1e3 * r['fetch_own_seconds']:6.2f}  "
                      f"gather/layer {1e6 * r.get('gather_layer_seconds', 0):6.1f} us  clock {1e3 * r['seconds']:6.2f} ms",
                      flush=True)
            (out / "cpu_placement.json").write_text(json.dumps(res, indent=1))
    for name in ("free", "rotate", "pinned"):
        own = [1e3 * r["own_seconds"] for r in res["probe"] if r["variant"] == name]
        clock = [1e3 * r["seconds"] for r in res["probe"] if r["variant"] == name]
        if own:
            m = statistics.median(own)
            print(f"SUMMARY {name:6s} n {len(own)} own median {m:6.2f} ms spread {(max(own) - min(own)) / m:5.2f}  "
                  f"clock median {statistics.median(clock):6.2f} ms", flush=True)
    s1 = steal_ticks()
    res["steal_ticks"] = {k: s1[k] - s0.get(k, 0) for k in s1}
    print("steal ticks over the script:", res["steal_ticks"].get("cpu"), flush=True)
    (out / "cpu_placement.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
