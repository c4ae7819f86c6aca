"""Where a real run's traced decode steps spent their time, lane by lane.

    python benchmarks/debug/trace_spans.py RUN_DIR STEP [STEP ...]

RUN_DIR holds a real run's ``trace.json`` and ``steps.csv`` (``alisa run --backend real``
or ``alisa validate --real-only``). Per step: its time, the sum of the Host lane's spans
(on a host-bound step, nearly all of it), and per lane and span name (layers pooled: "issue
L3" counts as "issue") the median span, its total and how many there were, in microseconds.
The figures in docs/validation.md's "Seventh matrix: what we learned" come from this.
"""
from __future__ import annotations

import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def span_kind(name: str) -> str:
    """'issue L3' -> 'issue'; 'L3' (a GPU or copy layer) -> 'L'; others unchanged."""
    if " L" in name:
        return name.rsplit(" L", 1)[0]
    return "L" if name[:1] == "L" and name[1:].isdigit() else name


def main() -> int:
    run, steps = Path(sys.argv[1]), {int(s) for s in sys.argv[2:]}
    raw = json.loads((run / "trace.json").read_text())
    events = raw["traceEvents"] if isinstance(raw, dict) else raw
    lanes = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    spans: dict[int, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in events:
        step = e.get("args", {}).get("step")
        if e.get("ph") == "X" and step in steps:
            spans[step][(lanes[e["tid"]], span_kind(e["name"]))].append(e["dur"])
    with open(run / "steps.csv", newline="") as f:
        times = {int(r["step"]): 1e6 * float(r["time_s"]) for r in csv.DictReader(f)}
    for step in sorted(steps):
        by = spans.get(step)
        if not by:
            print(f"step {step}: not traced")
            continue
        # the throttle's spans (traced since the ninth matrix) are waits for the GPU, not host work
        host = sum(sum(v) for (lane, kind), v in by.items() if lane == "Host" and kind != "throttle")
        print(f"step {step}: {times[step]:.0f} us, Host spans sum {host:.0f} us (throttle waits apart)")
        for (lane, kind), v in sorted(by.items()):
            print(f"  {lane:12s} {kind:16s} median {statistics.median(v):8.1f}  total {sum(v):9.1f}  n {len(v)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
