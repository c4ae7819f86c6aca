"""Measured against simulated step time, by what the plan fetches per sequence and layer.

    python benchmarks/debug/gather_regimes.py SCENARIO REAL_ROOT SIM_ROOT [--min-batch 32]

SCENARIO is the validation scenario (its sweep names the points); REAL_ROOT holds
``<point>/real`` runs and SIM_ROOT ``<point>/sim`` (``alisa validate``). The plans are
rebuilt from the scenario with the checked-in profile, so use the profile the runs were
validated with. Per point and per segment of spilling steps with one recompute ratio:
the range of KV rows and inputs x the plan fetches per sequence and layer, the steps,
their median measured/simulated step time, and from the traced steps in the segment
the gather's GB/s by layer (layer 0's gather runs before the compute, layers 1+ beside
it) measured and simulated. It found the twelfth run's 2x segments (docs/validation.md).
"""
from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Any


def h2d_rates(trace: Path) -> dict[int, tuple[float, float]]:
    """step -> (layer 0's gather GB/s, median of layers 1+), from a trace's H2D lane."""
    from collections import defaultdict

    raw = json.loads(trace.read_text())
    ev = raw["traceEvents"] if isinstance(raw, dict) else raw
    lanes = {e["tid"]: e["args"]["name"] for e in ev if e.get("name") == "thread_name"}
    per: dict[int, dict[int, float]] = defaultdict(dict)
    for e in ev:
        if e.get("ph") == "X" and lanes.get(e["tid"]) == "H2D" and e["name"][1:].isdigit() and e["dur"] > 0:
            per[e["args"].get("step", -1)][int(e["name"][1:])] = e["args"].get("bytes", 0) / e["dur"] / 1e3
    return {s: (r.get(0, 0.0), statistics.median(v for k, v in r.items() if k > 0))
            for s, r in per.items() if len(r) > 1}


def step_times(path: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["time_s"]) for r in csv.DictReader(path.read_text().splitlines())}


def main() -> int:
    from alisa.cli import _point_label
    from alisa.sim.policies import make_policy
    from alisa.sim.scenario import expand_sweep

    args = sys.argv[1:]
    min_batch = 1
    if "--min-batch" in args:
        i = args.index("--min-batch")
        min_batch = int(args[i + 1])
        del args[i:i + 2]
    scenario, real_root, sim_root = args[0], Path(args[1]), Path(args[2])
    name = Path(scenario).stem
    for params, sc in expand_sweep(scenario):
        if sc.workload.batch_size < min_batch:
            continue
        label = _point_label(sc.name, params)
        real, sim = real_root / label / "real", sim_root / label / "sim"
        if not (real / "steps.csv").exists() or not (sim / "steps.csv").exists():
            continue
        plans = [p for p in make_policy(sc).plans() if getattr(p, "step", -1) >= 0 and p.phase in ("II", "III")]
        R, S = (step_times(d / "steps.csv") for d in (real, sim))
        rr, sr = h2d_rates(real / "trace.json"), h2d_rates(sim / "trace.json")
        segs: list[list[Any]] = []
        for p in plans:
            if p.step not in R or p.step not in S:
                continue
            if not segs or segs[-1][0] != p.recompute_ratio or segs[-1][1][-1].step != p.step - 1:
                segs.append([p.recompute_ratio, []])
            segs[-1][1].append(p)
        print(f"{name} {label}")
        print("  ratio   KV rows  x rows   steps      real/sim   traced: gather GB/s real L0, L1+ | sim L1+")
        for ratio, ps in segs:
            steps = [p.step for p in ps]
            kv = [p.layers[0].h2d_kv_tokens for p in ps]
            x = [p.layers[0].recompute_tokens for p in ps]
            traced = [s for s in steps if s in rr and s in sr]
            tr = ""
            if traced:
                tr = (f"{statistics.median(rr[s][0] for s in traced):5.1f}, "
                      f"{statistics.median(rr[s][1] for s in traced):5.1f} | "
                      f"{statistics.median(sr[s][1] for s in traced):5.1f}  (steps {', '.join(map(str, traced))})")
            print(f"  {ratio:4.2f}  {min(kv):3d}-{max(kv):<3d}  {min(x):3d}-{max(x):<3d}  {steps[0]:4d}-{steps[-1]:<4d}  "
                  f"{statistics.median(R[s] / S[s] for s in steps):6.2f}     {tr}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
