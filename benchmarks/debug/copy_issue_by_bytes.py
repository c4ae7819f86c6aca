"""The real runs' host fetch costs by bytes a layer fetched, pooled over traced steps.

    python benchmarks/debug/copy_issue_by_bytes.py RESULTS_DIR [RESULTS_DIR ...]

Each RESULTS_DIR holds `alisa validate`'s real-run folders (``val-alisa*/real``, e.g.
``results/val-real17``). Per size bin of a layer's H2D bytes: how many traced layers, the
median copy issue and gather spans (microseconds; traced steps carry two extra event
records in the copy issue), the gather's rate, and the median issue span. The figures in
docs/validation.md's "Eighth matrix: what changed" come from this.
"""
from __future__ import annotations

import itertools
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

BINS_MB = (0, 1, 2, 3, 5, 8, 12, 16, 25, 40)


def layer_spans(run: Path) -> list[tuple[float, float, float, float]]:
    """(H2D MB, copy issue us, gather us, issue us) per traced fetching layer of one run."""
    raw = json.loads((run / "trace.json").read_text())
    events = raw["traceEvents"] if isinstance(raw, dict) else raw
    lanes = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    by: dict[tuple[int, int], dict[tuple[str, str], tuple[float, float | None]]] = defaultdict(dict)
    for e in events:
        step = e.get("args", {}).get("step")
        if e.get("ph") != "X" or not isinstance(step, int) or step < 0 or "L" not in e["name"]:
            continue
        kind, _, layer = e["name"].rpartition("L")
        if layer.isdigit():
            by[step, int(layer)][lanes[e["tid"]], kind.strip() or "L"] = (e["dur"], e["args"].get("bytes"))
    out = []
    for v in by.values():
        if ("CPU", "copy issue") in v and ("H2D", "L") in v:
            out.append((v["H2D", "L"][1] / 1e6, v["CPU", "copy issue"][0], v["CPU", "gather"][0], v["Host", "issue"][0]))
    return out


def main() -> int:
    pts = [p for d in sys.argv[1:] for run in sorted(Path(d).glob("val-alisa*/real")) for p in layer_spans(run)]
    print(f"{'MB/layer':>9s} {'n':>6s} {'copy issue':>11s} {'gather':>8s} {'GB/s':>6s} {'issue':>6s}")
    for lo, hi in itertools.pairwise(BINS_MB):
        sel = [p for p in pts if lo <= p[0] < hi]
        if sel:
            mb, copy, gather, issue = (statistics.median(x) for x in zip(*sel))
            print(f"{lo:3d}-{hi:<5d} {len(sel):6d} {copy:11.1f} {gather:8.1f} {mb / gather * 1e3:6.1f} {issue:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
