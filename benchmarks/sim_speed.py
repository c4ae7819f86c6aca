"""Wall time to simulate OPT-13B, batch 64, prompt 512, 1,024 generated tokens with ALISA
through all three phases (scenarios/opt-13b-three-phase.yaml). Target: under 2 s on a
2-core machine. Prints a table; appends the record to benchmarks/results/sim_speed.json.

    python benchmarks/sim_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import append_record

from alisa.sim.bundled import resolve_scenario
from alisa.sim.runner import simulate
from alisa.sim.scenario import load_scenario

TARGET_S = 2.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scenario", default="opt-13b-three-phase")
    args = ap.parse_args()
    sc = load_scenario(resolve_scenario(args.scenario))
    walls, events = [], 0
    result = None
    for _ in range(args.repeats):
        result, er = simulate(sc)
        walls.append(er.sim_wall_s)
        events = er.sim_events
    assert result is not None
    ph = result["phases"]
    med = statistics.median(walls)
    row = {
        "scenario": sc.name,
        "median_wall_s": med,
        "min_wall_s": min(walls),
        "max_wall_s": max(walls),
        "sim_events": events,
        "events_per_s": events / med,
        "phases": {k: v["steps"] for k, v in ph.items()},
        "throughput_tokens_per_s": result["throughput_tokens_per_s"],
        "target_s": TARGET_S,
        "meets_target": med < TARGET_S,
    }
    print(
        f"{'scenario':24s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'events':>8s} {'events/s':>10s}"
        "  phases I/II/III"
    )
    print(
        f"{sc.name:24s} {med:9.3f} {min(walls):7.3f} {max(walls):7.3f} {events:8d} {events / med:10.0f}  "
        f"{ph['I']['steps']}/{ph['II']['steps']}/{ph['III']['steps']}"
    )
    print(f"target < {TARGET_S} s: {'met' if med < TARGET_S else 'MISSED'}")
    append_record(Path(__file__).parent / "results" / "sim_speed.json", [row], {"repeats": args.repeats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
