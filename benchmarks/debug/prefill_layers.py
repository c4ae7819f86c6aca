"""A validation run's prefill layers, measured against simulated, with the prompt
importance's rows of each point (SWA: min(importance history, prompt)).

    python benchmarks/debug/prefill_layers.py SCENARIO SIM_ROOT REAL_ROOT [REAL_ROOT ...]

SIM_ROOT holds ``<point>/sim`` (``alisa validate --out``), each REAL_ROOT ``<point>/real``
(a measured run). Per point: the median GPU time of the prefill layers after the first
(the first carries one-off work), per measured run, and the simulated one.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path


def prefill_layer_ms(trace: Path) -> float | None:
    """Median duration of the 'prefill L1..' spans on the GPU compute lane (or the
    simulator's step -1 'L1..' spans), in ms."""
    from alisa.runtime.host_speed import _events

    spans, lanes = _events(trace)
    durs = []
    for e in spans:
        if lanes.get(e["tid"]) != "GPU compute":
            continue
        name = e["name"].removeprefix("prefill ")
        if (
            name.startswith("L")
            and name[1:].isdigit()
            and int(name[1:]) > 0
            and (e["name"].startswith("prefill ") or e.get("args", {}).get("step") == -1)
        ):
            durs.append(e["dur"] / 1e3)
    return statistics.median(durs) if durs else None


def main() -> int:
    from alisa.calibration.layer_gpu import prompt_importance_rows
    from alisa.cli import _point_label
    from alisa.sim.bundled import resolve_scenario
    from alisa.sim.scenario import expand_sweep

    scenario, sim_root, *real_roots = sys.argv[1:]
    print(f"{'point':64s} {'rows':>5s} {'sim ms':>8s}  measured ms (per run)")
    for params, sc in expand_sweep(resolve_scenario(scenario), []):
        label = _point_label(sc.name, params)
        sim = prefill_layer_ms(Path(sim_root) / label / "sim" / "trace.json")
        real = [prefill_layer_ms(Path(r) / label / "real" / "trace.json") for r in real_roots]
        print(
            f"{label:64s} {prompt_importance_rows(sc):5d} {sim or float('nan'):8.3f}  "
            + "  ".join(f"{x:.3f}" for x in real if x is not None)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
