"""How well the cost model's interpolation predicts calibration's own measurements: each
interior point of each table left out in turn and predicted from the rest, by the
piecewise-linear chord the cost model uses (linear in size) and by a log-log chord (what
it used before). Prints, per table, the median signed and median absolute error of each.

    python benchmarks/table_interpolation.py hardware_profiles/h100-80gb-measured.yaml [MORE.yaml ...]

Each profile is read with the raw measurements beside it (``<name>.measurements.json``);
the tables are rebuilt from those rows as calibration builds them (``table_points``).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import platform
import statistics
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from alisa.calibration.fit import table_points
from alisa.sim.costs import _Interp
from alisa.sim.hardware import OpTable


def loglog(x: list[float], y: list[float], size: float) -> float:
    """The log-log chord between measured points, as the cost model interpolated before
    (the same floor below the grid and edge rate above it as ``_Interp``)."""
    if size <= 0:
        return 0.0
    if size <= x[0]:
        return y[0]
    if size >= x[-1]:
        return y[-1] + max((y[-1] - y[-2]) / (x[-1] - x[-2]), 0.0) * (size - x[-1])
    lx = [math.log(v) for v in x]
    i = bisect.bisect_right(lx, math.log(size)) - 1
    f = (math.log(size) - lx[i]) / (lx[i + 1] - lx[i])
    return math.exp(math.log(y[i]) + f * (math.log(y[i + 1]) - math.log(y[i])))


def leave_one_out(rows: list[dict]) -> dict[str, list[float]]:
    """Relative errors of each chord at every interior size, predicted without it."""
    errs: dict[str, list[float]] = {"linear": [], "loglog": []}
    sizes = sorted({r["size"] for r in rows})
    for s in sizes[1:-1]:
        rest = [r for r in rows if r["size"] != s]
        x, y = table_points(np.array([r["size"] for r in rest]), np.array([r["seconds"] for r in rest]))
        x, y = [float(v) for v in x], [float(v) for v in y]
        truth = statistics.median(r["seconds"] for r in rows if r["size"] == s)
        errs["linear"].append(_Interp.of(OpTable(size=x, seconds=y))(s) / truth - 1)
        errs["loglog"].append(loglog(x, y, s) / truth - 1)
    return errs


def report(profile: Path) -> list[str]:
    prof = yaml.safe_load(profile.read_text())
    rows = json.loads(profile.with_suffix(".measurements.json").read_text())
    by_op: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_op[r["op"]].append(r)
    head = f"  {'table':30s} {'linear: median / |median|':>26s}  {'log-log':>16s}"
    lines = [f"{profile} ({prof.get('provenance', '')})", head]
    counts = {"linear_no_worse": 0, "loglog_high": 0, "tables": 0}
    for op in prof.get("tables", {}):
        if len({r["size"] for r in by_op.get(op, [])}) < 4:
            continue
        e = leave_one_out(by_op[op])
        med = {k: statistics.median(v) for k, v in e.items()}
        mabs = {k: statistics.median(abs(x) for x in v) for k, v in e.items()}
        counts["tables"] += 1
        counts["linear_no_worse"] += mabs["linear"] <= mabs["loglog"]
        counts["loglog_high"] += med["loglog"] > 0
        lines.append(
            f"  {op:30s} {100 * med['linear']:+12.1f} / {100 * mabs['linear']:4.1f} %"
            f"  {100 * med['loglog']:+8.1f} / {100 * mabs['loglog']:4.1f} %"
        )
    lines.append(
        f"  linear no worse on {counts['linear_no_worse']} of {counts['tables']} tables;"
        f" log-log's median above zero on {counts['loglog_high']}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for p in args.profiles:
        if not p.with_suffix(".measurements.json").is_file():
            print(f"table_interpolation: {p}: no raw measurements beside it", file=sys.stderr)
            return 2
    print(f"# python benchmarks/table_interpolation.py {' '.join(map(str, args.profiles))}")
    print(f"# {platform.node()}, {platform.processor() or platform.machine()}, {datetime.now(UTC).date().isoformat()}")
    for p in args.profiles:
        print("\n".join(report(p)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
