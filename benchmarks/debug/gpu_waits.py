"""How much of a real run's GPU layer spans is the compute stream waiting for its fetched
rows, against the simulated layers.

    python benchmarks/debug/gpu_waits.py REAL_ROOT SIM_ROOT

REAL_ROOT holds ``<point>/real`` folders (``alisa validate --real-only``; traces written
since the eleventh run have a ``wait copy L<l>`` span on the GPU lane: the compute
stream's wait for the layer's H2D copy); SIM_ROOT holds ``<point>/sim`` folders. Per
traced step from 8 on: the measured layer span (median), the same less its copy wait
(median and step total), the copy waits' total, and the simulated layer span.
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def gpu_layers(trace: Path) -> tuple[dict[int, dict[int, float]], dict[int, dict[int, float]]]:
    raw = json.loads(trace.read_text())
    ev = raw["traceEvents"] if isinstance(raw, dict) else raw
    lanes = {e["tid"]: e["args"]["name"] for e in ev if e.get("name") == "thread_name"}
    layers: dict[int, dict[int, float]] = defaultdict(dict)
    waits: dict[int, dict[int, float]] = defaultdict(dict)
    for e in ev:
        if e.get("ph") != "X" or lanes.get(e["tid"]) != "GPU compute":
            continue
        step, name = e["args"].get("step", -1), e["name"]
        if name.startswith("wait copy L"):
            waits[step][int(name[11:])] = e["dur"]
        elif name[:1] == "L" and name[1:].isdigit():
            layers[step][int(name[1:])] = e["dur"]
    return layers, waits


def main() -> int:
    real_root, sim_root = Path(sys.argv[1]), Path(sys.argv[2])
    for run in sorted(real_root.glob("*/real")):
        point = run.parent.name
        layers, waits = gpu_layers(run / "trace.json")
        sim, _ = gpu_layers(sim_root / point / "sim" / "trace.json")
        for step in sorted(s for s in layers if s >= 8):
            own = [d - waits[step].get(l, 0.0) for l, d in layers[step].items()]
            sl = list(sim.get(step, {}).values())
            print(f"{point:52s} step {step:4d}  layer {statistics.median(layers[step].values()):6.0f} us  "
                  f"less copy wait {statistics.median(own):6.0f} us ({sum(own) / 1e3:6.2f} ms)  "
                  f"copy waits {sum(waits[step].values()) / 1e3:5.2f} ms | simulated layer "
                  f"{statistics.median(sl) if sl else 0:6.0f} us ({sum(sl) / 1e3:6.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
