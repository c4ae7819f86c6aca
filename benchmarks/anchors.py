"""The simulator against FlexGen's published single-T4 table (FMInference/FlexGen,
benchmark/batch_size_table.md): every row the simulator models, simulated against
published, with the error; then, with ``--fit``, three global efficiency factors of the
T4 profile (GEMM, GPU memory, PCIe) fitted to the rows, with in-sample and leave-one-out
errors. Also simulates the checked-in fitted profile (t4-16gb-anchored.yaml). Writes
benchmarks/results/anchors/anchors-check.{json,txt}, or with --fit anchors.{json,txt}.

    python benchmarks/anchors.py [--fit [--write-profile]]

The sweep is scenarios/anchors/flexgen-t4.yaml; the profile hardware_profiles/t4-16gb.yaml
(datasheet, its assumptions written down before this comparison). Target: median
|error| <= 10 %, worst <= 25 % over the modelled rows.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import machine

from alisa.sim.atomic import write_text
from alisa.sim.bundled import package_dir, resolve_scenario
from alisa.sim.errors import InputError
from alisa.sim.runner import simulate
from alisa.sim.scenario import expand_sweep

SWEEP = "anchors/flexgen-t4"
PUBLISHED_FILE = package_dir("alisa.scenarios") / "anchors" / "flexgen-t4.published.json"
_TABLE = json.loads(PUBLISHED_FILE.read_text())
SOURCE: str = _TABLE["source"]
PUBLISHED: dict[str, float] = _TABLE["published_tokens_per_s"]  # by the sweep's case names
NOT_MODELLED: dict[str, tuple[float, str]] = {k: (v["published"], v["why"]) for k, v in _TABLE["not_modelled"].items()}
FACTORS = ("gemm_efficiency", "hbm_efficiency", "pcie_efficiency")
TARGET_MEDIAN, TARGET_WORST = 0.10, 0.25


def simulate_rows(sets: list[str]) -> dict[str, dict[str, Any]]:
    rows = {}
    for _, sc in expand_sweep(resolve_scenario(SWEEP), sets):
        try:
            r, _ = simulate(sc)
            thr = r["throughput_tokens_per_s"] if not r["oom"] else 0.0
            note = r["oom_reason"] or ""
        except InputError as e:
            thr, note = 0.0, e.reason
        rows[sc.name] = {"simulated": thr, "published": PUBLISHED[sc.name], "note": note}
    return rows


def errors(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {k: (v["simulated"] / v["published"] - 1.0) if v["simulated"] > 0 else -1.0 for k, v in rows.items()}


def summary(errs: dict[str, float]) -> dict[str, float]:
    a = [abs(e) for e in errs.values()]
    return {"median_abs_error": statistics.median(a), "worst_abs_error": max(a)}


def fit(names: list[str], start: dict[str, float]) -> tuple[dict[str, float], float]:
    """The factors minimising the sum of squared log errors over ``names`` (Nelder-Mead
    in log space, each factor kept in (0.05, 1])."""
    from scipy.optimize import minimize

    def loss(x: Any) -> float:
        vals = {f: min(1.0, max(0.05, math.exp(v))) for f, v in zip(FACTORS, x, strict=True)}
        rows = simulate_rows([f"hardware.{f}={v}" for f, v in vals.items()])
        return sum(math.log(max(rows[n]["simulated"], 1e-9) / rows[n]["published"]) ** 2 for n in names)

    x0 = [math.log(start[f]) for f in FACTORS]
    res = minimize(loss, x0, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-6, "maxiter": 400})
    return {f: round(min(1.0, max(0.05, math.exp(v))), 4) for f, v in zip(FACTORS, res.x, strict=True)}, float(res.fun)


def table(rows: dict[str, dict[str, Any]], errs: dict[str, float], title: str) -> str:
    lines = [title, f"{'row':30s} {'published':>10s} {'simulated':>10s} {'error':>8s}"]
    for k, v in rows.items():
        lines.append(f"{k:30s} {v['published']:10.2f} {v['simulated']:10.2f} {100 * errs[k]:+7.1f}%  {v['note']}")
    s = summary(errs)
    met = s["median_abs_error"] <= TARGET_MEDIAN and s["worst_abs_error"] <= TARGET_WORST
    lines.append(
        f"median |error| {100 * s['median_abs_error']:.1f}%, worst {100 * s['worst_abs_error']:.1f}% "
        f"(target <= {100 * TARGET_MEDIAN:.0f}% / {100 * TARGET_WORST:.0f}%: {'met' if met else 'not met'})"
    )
    return "\n".join(lines)


def write_anchored_profile(factors: dict[str, float], fit: dict[str, float], loo: dict[str, float]) -> Path:
    """The datasheet T4 profile with the fitted factors, marked as such."""
    import yaml

    from alisa.sim.hardware import profile_path, read_yaml

    base = profile_path("t4-16gb")
    data = read_yaml(base)
    data.update(factors)
    data["name"] = "t4-16gb-anchored"
    data["source"] = "fitted"
    data["provenance"] = (
        f"{base.name} with {', '.join(FACTORS)} fitted to {SOURCE} by benchmarks/anchors.py --fit "
        f"(least squares in log throughput over {len(PUBLISHED)} rows): in-sample median |error| "
        f"{100 * fit['median_abs_error']:.1f}% (worst {100 * fit['worst_abs_error']:.1f}%), leave-one-out "
        f"{100 * loo['median_abs_error']:.1f}% (worst {100 * loo['worst_abs_error']:.1f}%). Everything else as in "
        f"{base.name}."
    )
    path = base.with_name("t4-16gb-anchored.yaml")
    head = "# Generated by benchmarks/anchors.py --fit --write-profile; docs/anchors.md says how good it is.\n"
    write_text(path, head + yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fit", action="store_true", help="also fit the three factors, with leave-one-out errors")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "anchors"))
    ap.add_argument(
        "--write-profile",
        action="store_true",
        help="with --fit: write hardware_profiles/t4-16gb-anchored.yaml (the datasheet profile, fitted factors)",
    )
    args = ap.parse_args()
    out: dict[str, Any] = {"source": SOURCE, "sweep": f"scenarios/{SWEEP}.yaml", "machine": machine()}
    rows = simulate_rows([])
    errs = errors(rows)
    text = [table(rows, errs, "datasheet profile as written (t4-16gb.yaml), no fit")]
    out["as_written"] = {"rows": rows, "errors": errs, **summary(errs)}
    # the checked-in anchored profile, as a user gets it (its factors were fitted on these rows)
    rows_a = simulate_rows(["hardware=t4-16gb-anchored"])
    errs_a = errors(rows_a)
    text += ["", table(rows_a, errs_a, "checked-in t4-16gb-anchored.yaml (fitted on these rows: in-sample)")]
    out["anchored_profile"] = {"rows": rows_a, "errors": errs_a, **summary(errs_a)}
    if args.fit:
        from alisa.sim.hardware import load_profile

        hw = load_profile("t4-16gb")
        start = {f: float(getattr(hw, f)) for f in FACTORS}
        names = list(PUBLISHED)
        fitted, _ = fit(names, start)
        rows_f = simulate_rows([f"hardware.{f}={v}" for f, v in fitted.items()])
        errs_f = errors(rows_f)
        text.append("")
        text.append(table(rows_f, errs_f, f"fitted on all rows: {fitted}"))
        loo: dict[str, float] = {}
        loo_factors: dict[str, dict[str, float]] = {}
        for held in names:
            f_h, _ = fit([n for n in names if n != held], fitted)
            r_h = simulate_rows([f"hardware.{f}={v}" for f, v in f_h.items()])
            loo[held] = errors(r_h)[held]
            loo_factors[held] = f_h
        text.append("")
        text.append("leave-one-out: each row predicted by factors fitted on the other eight")
        for k, e in loo.items():
            text.append(f"  {k:30s} {100 * e:+7.1f}%  {loo_factors[k]}")
        s = summary(loo)
        text.append(f"  median |error| {100 * s['median_abs_error']:.1f}%, worst {100 * s['worst_abs_error']:.1f}%")
        out["fitted"] = {"factors": fitted, "rows": rows_f, "errors": errs_f, **summary(errs_f)}
        out["leave_one_out"] = {"errors": loo, "factors": loo_factors, **summary(loo)}
        if args.write_profile:
            write_anchored_profile(fitted, summary(errs_f), summary(loo))
    text.append("")
    text.append("not modelled:")
    for k, (pub, why) in NOT_MODELLED.items():
        text.append(f"  {k:30s} {pub:10.2f}  {why}")
    out["not_modelled"] = {k: {"published": p, "why": w} for k, (p, w) in NOT_MODELLED.items()}
    report = "\n".join(text)
    print(report)
    folder = Path(args.out)
    stem = "anchors" if args.fit else "anchors-check"  # a plain check never replaces the recorded fit
    write_text(folder / f"{stem}.json", json.dumps(out, indent=1))
    write_text(folder / f"{stem}.txt", report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
