"""Why does the real backend's host run at different speeds from run to run?

    python benchmarks/debug/host_spread.py OUT [variant ...]

The sixth validation matrix's ALISA runs, all in one process on one machine, gathered
the same rows at 17-37 GB/s and issued the same layer in 27-47 us depending on the run
(docs/validation.md). This runs one short ALISA point (LLaMA-7B b8, prompt 512, 64
steps, Phase II) a few times in each of several child processes, one per variant of
thread placement, and prints per run: mean step time and the per-layer medians of the
host's issue, gather and copy issue. It also writes the machine's CPU topology.
Results: OUT/host_spread.json, OUT/host_spread-topology.txt.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# name: (environment added, command prefix)
VARIANTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "default": ({}, []),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),
    "bind-cores": ({"OMP_PROC_BIND": "spread", "OMP_PLACES": "cores"}, []),
    "bind-close": ({"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}, []),
    "threads4": ({"ALISA_PROBE_FETCH_THREADS": "4"}, []),
    "taskset-0-7": ({}, ["taskset", "-c", "0-7"]),
    "node0": ({}, ["numactl", "--cpunodebind=0", "--membind=0"]),
}


def thread_cpu() -> int:
    """The CPU the calling thread last ran on (/proc field 39)."""
    try:
        stat = Path("/proc/thread-self/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return -1


def child(runs: int, gen: int) -> list[dict[str, float]]:
    from alisa.runtime.executor import RealExecutor, RealOptions
    from alisa.runtime.run import release_gpu
    from alisa.sim.scenario import load_scenario

    sc = load_scenario("scenarios/validation/alisa.yaml",
                       ["model=llama-7b", "workload.batch_size=8", f"workload.gen_len={gen}", "sweep=null"])
    threads = os.environ.get("ALISA_PROBE_FETCH_THREADS")
    out = []
    for _ in range(runs):
        ex = RealExecutor(sc, RealOptions(layer_trace_steps=gen, trace_later=0,
                                          fetch_threads=int(threads) if threads else None))
        r = ex.run()
        steps = [s for s in r.er.steps if s.phase != "prefill"]
        row: dict[str, float] = {"step_ms": 1e3 * statistics.mean(s.end_s - s.start_s for s in steps),
                                 "cpu": thread_cpu()}
        for key in ("issue", "gather", "copy issue", "before gather", "fetch ahead", "wait selection", "end"):
            d = [e - s for lane, name, s, e, _ in ex.host_spans
                 if (name.rsplit(" L", 1)[0] if " L" in name else name) == key]
            row[key + "_us"] = 1e6 * statistics.median(d) if d else 0.0
        out.append(row)
        del ex, r
        release_gpu()
    return out


def topology() -> str:
    parts = []
    for cmd in (["lscpu"], ["numactl", "-H"], ["nproc"], ["cat", "/proc/self/status"]):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            text = p.stdout if cmd[-1] != "/proc/self/status" else "\n".join(
                x for x in p.stdout.splitlines() if x.startswith(("Cpus_allowed", "Mems_allowed")))
            parts.append(f"$ {' '.join(cmd)}\n{text}")
        except (OSError, subprocess.SubprocessError) as e:
            parts.append(f"$ {' '.join(cmd)}\n({e})")
    for path in ("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list",
                 "/sys/devices/system/cpu/cpu1/topology/thread_siblings_list",
                 "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor"):
        try:
            parts.append(f"{path}: {Path(path).read_text().strip()}")
        except OSError:
            parts.append(f"{path}: (absent)")
    return "\n".join(parts)


def main() -> int:
    if sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]))))
        return 0
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "host_spread-topology.txt").write_text(topology())
    names = sys.argv[2:] or list(VARIANTS)
    results: dict[str, list[dict[str, float]]] = {}
    for name in names:
        env, prefix = VARIANTS[name]
        p = subprocess.run(prefix + [sys.executable, __file__, "--child", "3", "64"],
                           env={**os.environ, **env}, capture_output=True, text=True)
        if p.returncode != 0:
            print(f"{name}: failed\n{p.stderr[-3000:]}", flush=True)
            continue
        results[name] = json.loads(p.stdout.strip().splitlines()[-1])
        for r in results[name]:
            print(f"{name:12s} step {r['step_ms']:6.2f} ms  issue {r['issue_us']:5.1f}  gather {r['gather_us']:6.1f}  "
                  f"copy issue {r['copy issue_us']:5.1f}  before gather {r['before gather_us']:5.1f}  "
                  f"wait sel {r['wait selection_us']:6.1f}  end {r['end_us']:6.1f}  cpu {r['cpu']:.0f}", flush=True)
        (out / "host_spread.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
