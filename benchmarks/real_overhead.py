"""Where a real decode step's time goes: host dispatch against GPU time, eager against
CUDA-graphed, beside the simulator's step time for the same point.

    python benchmarks/real_overhead.py --out OUT [--gen 64] [--points llama-7b:8,opt-6.7b:32]

For each point (model:batch) and policy of scenarios/validation/*.yaml it runs the real
backend twice (graphs on, off) and reports per decode step: the measured time (CUDA
events), the host time spent issuing it (perf_counter around the executor's step), the
part of that in ALISA's selection (which ends in the step's one host round trip) and in
waiting for the host fetch worker, and the simulator's time. Needs a CUDA GPU. Appends to
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


def measure(sc, graphs: bool) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    ex = RealExecutor(sc, RealOptions(graphs=graphs))
    spent = {"host_step": time_methods(ex, ("_decode",))["_decode"]}
    if ex.slots is not None:
        spent["select"] = time_methods(ex.slots, ("select",))["select"]
    if ex.fetcher is not None:
        spent["fetch_wait"] = time_methods(ex.fetcher, ("wait",))["wait"]
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
            for graphs in (False, True):
                m = measure(sc, graphs)
                row.update({f"{'graph' if graphs else 'eager'}_{k}": v for k, v in m.items()})
            rows.append(row)
            print(f"{pol:9s} {model:9s} b{batch:>3s}  sim {row['sim_step_ms']:6.1f} ms | eager step "
                  f"{row['eager_step_ms']:6.1f} host {row['eager_host_step']:6.1f} | graph step "
                  f"{row['graph_step_ms']:6.1f} host {row['graph_host_step']:6.1f} select "
                  f"{row.get('graph_select', 0):5.2f} wait {row.get('graph_fetch_wait', 0):5.2f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    append_record(out / "real_overhead.json", rows, {"gen_len": args.gen})
    return 0


if __name__ == "__main__":
    sys.exit(main())
