"""Where a real decode step's time goes: host dispatch against GPU time, eager against
CUDA-graphed, beside the simulator's step time for the same point.

    python benchmarks/real_overhead.py --out OUT [--gen 64] [--points llama-7b:8,opt-6.7b:32] [--modes graph]

For each point (model:batch) and policy of scenarios/validation/*.yaml it runs the real
backend (graphs off and on, or --modes) and reports per decode step: the measured time
(CUDA events), the host time spent issuing it (perf_counter around the executor's step)
and its parts in ms (graph replays or eager bodies: begin/pre/post/end; ALISA's
selection, which ends in the step's one host round trip, staging, write-through, landing,
waiting for the host fetch worker; FlexGen-like staging, prefetch, spill), and the
simulator's time. Needs a CUDA GPU. Appends to
OUT/real_overhead.json with the command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from alisa.calibration.host_issue import time_methods
from alisa.runtime.executor import RealExecutor, RealOptions
from alisa.runtime.run import release_gpu
from alisa.sim.runner import simulate
from alisa.sim.scenario import expand_sweep

sys.path.insert(0, str(Path(__file__).parent))
from _record import append_record  # noqa: E402


# host time inside a step, by part: (object attribute, method names)
PARTS = {"step_fn": ("begin", "pre", "post", "end"),
         "slots": ("select", "resolve", "write_through_step"), "recompute": ("run",),
         "fetcher": ("wait",), "prefix": ("stage_step", "prefetch", "spill")}


def measure(sc, graphs: bool) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    ex = RealExecutor(sc, RealOptions(graphs=graphs))
    spent = {"host_step": time_methods(ex, ("_decode",))["_decode"]}
    for attr, names in PARTS.items():
        obj = getattr(ex, attr)
        if obj is not None:
            for name, v in time_methods(obj, names).items():
                spent[{"wait": "fetch_wait", "run": "recompute"}.get(name, name)] = v
    run = ex.run()
    del ex
    release_gpu()
    dec = [r for r in run.er.steps if r.phase != "prefill"]
    # the rehearsal's steps went through the same wrappers: count them out
    n_all = len(dec) + 2
    out = {k: sum(v) / n_all * 1e3 for k, v in spent.items()}
    out["step_ms"] = sum(r.time_s for r in dec) / len(dec) * 1e3
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--points", default="llama-7b:8,llama-7b:32,opt-6.7b:8")
    ap.add_argument("--policies", default="alisa,dense-gpu,flexgen")
    ap.add_argument("--modes", default="eager,graph", help="eager, graph or both (comma-separated)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = []
    for point in args.points.split(","):
        model, batch = point.split(":")
        sweep = json.dumps({"model": [model], "workload.batch_size": [int(batch)], "workload.gen_len": [args.gen]})
        for pol in args.policies.split(","):
            (_, sc), = expand_sweep(f"scenarios/validation/{pol}.yaml", [f"sweep={sweep}"])
            _, er = simulate(sc)
            sim_dec = [r for r in er.steps if r.phase != "prefill"]
            row: dict[str, Any] = {"policy": pol, "model": model, "batch": int(batch),
                                   "sim_step_ms": sum(r.time_s for r in sim_dec) / len(sim_dec) * 1e3}
            line = f"{pol:9s} {model:9s} b{batch:>3s}  sim {row['sim_step_ms']:6.1f} ms"
            for mode in args.modes.split(","):
                m = measure(sc, mode == "graph")
                row.update({f"{mode}_{k}": v for k, v in m.items()})
                parts = " ".join(f"{k} {v:.2f}" for k, v in m.items() if k not in ("step_ms", "host_step"))
                line += f" | {mode} step {m['step_ms']:6.1f} host {m['host_step']:6.1f} ({parts})"
            rows.append(row)
            print(line, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    append_record(out / "real_overhead.json", rows, {"gen_len": args.gen})
    return 0


if __name__ == "__main__":
    sys.exit(main())
