"""What-if: the same plans re-timed with one hardware-profile field changed, against measured runs.

    python benchmarks/debug/timing_sensitivity.py SCENARIO --real-from DIR [DIR ...] \
        --vary hardware.zero_copy.gather_slowdown=0,0.1,0.2,0.3 [--out FILE.json]
    python benchmarks/debug/timing_sensitivity.py SCENARIO --real-from DIR [DIR ...] \
        --timing-profile PROFILE.yaml [...]   # the same plans timed by a whole other calibration

The plans are the scheduler's under the scenario's own profile, the ones the measured runs
executed; only their timing takes the changed value (``simulate(sc, timing)``, as
``alisa validate --host-conditioned`` does). Changing the profile through ``--set`` would
also change the plans (the cost model picks recompute ratios from it), and the comparison
would then be between different runs. Per value: the median and worst |error| per metric
over the points, as ``alisa validate`` reports them.

This is a sensitivity, not a calibration: a value that fits the measured runs here says
what calibration would have to measure for the model to hold, nothing more.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def retimed(sc: Any, dotted: str, value: float) -> Any:
    """The scenario's hardware profile with one dotted field (``hardware.a.b``) changed,
    checked as ``--set`` checks it."""
    from alisa.sim.hardware import HardwareProfile
    from alisa.sim.scenario import set_path

    data = {"hardware": sc.hardware.model_dump()}
    set_path(data, dotted, value, file="--vary", strict=True)
    return HardwareProfile.model_validate(data["hardware"])


def from_file(path: Path) -> Any:
    """A whole profile (another calibration of the same GPU) as the timing."""
    from alisa.sim.hardware import load_profile

    return load_profile(str(path))


def sweep(
    scenario: str, real_from: list[Path], dotted: str, values: list[Any], sets: list[str] | None = None
) -> dict[str, Any]:
    from alisa.cli import _point_label
    from alisa.runtime.validate import compare_repeats, read_run, summarize
    from alisa.sim.bundled import resolve_scenario
    from alisa.sim.runner import simulate
    from alisa.sim.scenario import expand_sweep

    out: dict[str, Any] = {}
    points = expand_sweep(resolve_scenario(scenario), sets or [])
    for v in values:
        rows = []
        for params, sc in points:
            label = _point_label(sc.name, params)
            reals = [read_run(rf / label / "real")[0] for rf in real_from]
            timing = from_file(v) if isinstance(v, Path) else retimed(sc, dotted, v)
            sim, _ = simulate(sc, timing)
            rows += [{"scenario": label, "metric": m.name, "error": m.error} for m in compare_repeats(sim, reals)]
        out[str(v)] = {"summary": summarize(rows), "points": rows}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario")
    ap.add_argument("--real-from", nargs="+", required=True, type=Path)
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--vary", help="hardware.dotted.field=v1,v2,...")
    how.add_argument("--timing-profile", nargs="+", type=Path, help="profile files to time the plans with")
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="scenario edits, as alisa run's (e.g. hardware=PROFILE.yaml: the profile the runs were planned with)",
    )
    ap.add_argument("--points", action="store_true", help="also each point's errors per value")
    args = ap.parse_args()
    values: list[Any]
    if args.timing_profile:
        dotted, values = "hardware (timing profile)", list(args.timing_profile)
    else:
        dotted, _, vals = args.vary.partition("=")
        values = [float(x) for x in vals.split(",") if x]
    if not dotted.startswith("hardware"):
        ap.error("--vary names a hardware field: hardware.section.field=v1,v2,...")
    from alisa.sim.errors import InputError

    try:
        res = sweep(args.scenario, args.real_from, dotted, values, args.set)
    except InputError as e:
        print(f"timing_sensitivity: {e.message()}", file=sys.stderr)
        return 2
    except OSError as e:  # a point without its measured run
        print(f"timing_sensitivity: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    metrics = ["throughput_tokens_per_s", "step_time_phase_II_s", "step_time_phase_III_s", "prefill_time_s"]
    print(f"{dotted:>40s}  " + "  ".join(f"{m[:24]:>24s}" for m in metrics))
    for v, r in res.items():
        summ = r["summary"]
        cells = [
            f"{100 * summ[m]['median_abs_error']:5.1f}% / {100 * summ[m]['worst_abs_error']:5.1f}% n={summ[m]['n']}"
            if m in summ
            else "-"
            for m in metrics
        ]
        print(f"{v:>40s}  " + "  ".join(f"{c:>24s}" for c in cells))
    print("(median / worst |error| over points; the same plans, re-timed)")
    if args.points:
        for v, r in res.items():
            print(f"\n{dotted} = {v}: error (simulated - measured) / measured")
            by: dict[str, dict[str, float]] = {}
            for row in r["points"]:
                if row["error"] is not None:
                    by.setdefault(row["scenario"], {})[row["metric"]] = row["error"]
            for label, errs in by.items():
                print(
                    f"  {label:64s} "
                    + "  ".join(
                        f"{m.removesuffix('_s').removeprefix('step_time_')[:10]:>10s} {100 * errs[m]:+6.1f}%"
                        for m in metrics
                        if m in errs
                    )
                )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "command": " ".join(["python", *sys.argv]),
                    "machine": platform.node(),
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "field": dotted,
                    "values": res,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
