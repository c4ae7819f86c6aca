"""Wall time to simulate OPT-13B, batch 64, prompt 512, 1,024 generated tokens with ALISA
through all three phases (scenarios/opt-13b-three-phase.yaml), with the default engine
(the event model in closed form) and the full SimPy event model (``--exact``): the engine
speed before and after. Target: under 0.3 s median for the default engine on a 2-core
machine. Prints a table; appends the record to benchmarks/results/sim_speed.json.

    python benchmarks/sim_speed.py [--repeats 5] [--scenario NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import append_record

from alisa.sim.bundled import resolve_scenario
from alisa.sim.runner import simulate
from alisa.sim.scenario import Scenario, load_scenario

TARGET_S = 0.3


def engine_rows(sc: Scenario, repeats: int) -> list[dict[str, Any]]:
    """One row per engine: median/min/max wall time over ``repeats`` runs (plans included)."""
    rows = []
    for engine, exact in (("exact (SimPy, before)", True), ("closed form (default)", False)):
        walls, events, result = [], 0, None
        for _ in range(repeats):
            result, er = simulate(sc, exact=exact)
            walls.append(er.sim_wall_s)
            events = er.sim_events
        assert result is not None
        med = statistics.median(walls)
        rows.append(
            {
                "scenario": sc.name,
                "engine": engine,
                "median_wall_s": med,
                "min_wall_s": min(walls),
                "max_wall_s": max(walls),
                "sim_events": events,
                "phases": {k: v["steps"] for k, v in result["phases"].items()},
                "throughput_tokens_per_s": result["throughput_tokens_per_s"],
            }
        )
    rows[1]["speedup"] = rows[0]["median_wall_s"] / rows[1]["median_wall_s"]
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'scenario':22s} {'engine':22s} {'median s':>9s} {'min s':>7s} {'max s':>7s}  phases I/II/III  tok/s"]
    for r in rows:
        ph = r["phases"]
        lines.append(
            f"{r['scenario']:22s} {r['engine']:22s} {r['median_wall_s']:9.3f} {r['min_wall_s']:7.3f} "
            f"{r['max_wall_s']:7.3f}  {ph['I']}/{ph['II']}/{ph['III']:<9}  {r['throughput_tokens_per_s']:.1f}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scenario", default="opt-13b-three-phase")
    args = ap.parse_args()
    sc = load_scenario(resolve_scenario(args.scenario))
    rows = engine_rows(sc, args.repeats)
    fast = rows[1]
    fast["target_s"], fast["meets_target"] = TARGET_S, fast["median_wall_s"] < TARGET_S
    print(table(rows))
    print(
        f"speed-up {fast['speedup']:.1f}x; same throughput: "
        f"{rows[0]['throughput_tokens_per_s'] == fast['throughput_tokens_per_s']}; "
        f"target < {TARGET_S} s: {'met' if fast['meets_target'] else 'MISSED'}"
    )
    append_record(Path(__file__).parent / "results" / "sim_speed.json", rows, {"repeats": args.repeats})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
