"""Calibrate -> validate on whichever GPU is lent: the one routine (docs/validation.md).

    python benchmarks/gpu_routine.py plan [--profile P]          # any machine: points, phases, calls, budget
    python benchmarks/gpu_routine.py run OUT --call N [--profile P]   # on the GPU, call N of the plan
    python benchmarks/gpu_routine.py validate OUT... [--profile P]    # any machine: simulated vs measured

The points: a lean ALISA matrix (LLaMA-7B and OPT-6.7B at batch 16 and 32, each at the
shortest generation length where the simulator puts at least 5% of the steps in Phase II
and in Phase III on the profile) with the host and the device gather, dense-gpu and
FlexGen-like at the same points, and two points off the matrix (other batch, prompt,
generation and KV budget), each run twice, in separate processes. The stages are packed
into device calls of at most ``CALL_LIMIT_S`` by an estimate of each (its simulated run
time plus a per-run overhead read off the thirteenth run), so the whole routine fits
one 30-minute lease: the first call calibrates the GPU (full, not --quick) and writes its
profile, which chooses the generation lengths of everything after it.

``run`` writes each stage's measured runs as OUT/<stage>.tgz (the device tool returns few
files, not deep folders) and the profile as OUT/<profile>.yaml with its measurements;
``validate`` unpacks them and compares every point against its two runs: a metric is met
when its |error| is within its target (throughput 3 %, a phase's step time 5 %), or within
the two runs' own spread, (max - min) / median.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alisa.sim.bundled import resolve_scenario
from alisa.sim.errors import InputError
from alisa.sim.hardware import load_profile, profile_names, profile_path
from alisa.sim.runner import simulate
from alisa.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
CALL_LIMIT_S = 540.0  # the device tool stops a command at 600 s
# a full `alisa calibrate`: 261-264 s on the lent H100s (2026-12-05/06) before the step probe
# (~100 s more), plus margin
CALIBRATE_S = 420.0
PLANNED_WITH = "planned-with.yaml"  # in each stage's archive: the profile its runs were planned with
STASH = Path(tempfile.gettempdir()) / "alisa-routine"  # call 1's profile, for later calls on the same machine
RUN_OVERHEAD_S = 14.0  # per measured run beyond its own time: weights, graphs, rehearsal (thirteenth run)
MODELS = ("llama-7b", "opt-6.7b")
BATCHES = (16, 32)
GEN_CANDIDATES = (256, 384, 512, 768, 1024)
OFF_MATRIX = (  # other batch, prompt, generation and KV budget than the matrix
    {
        "name": "off-llama-7b-b24",
        "model": "llama-7b",
        "workload.batch_size": 24,
        "workload.prompt_len": 384,
        "policy.gpu_kv_budget_tokens": 256,
    },
    {
        "name": "off-opt-6.7b-b12",
        "model": "opt-6.7b",
        "workload.batch_size": 12,
        "workload.prompt_len": 640,
        "policy.gpu_kv_budget_tokens": 400,
    },
)
TARGETS = {
    "throughput_tokens_per_s": 0.03,
    "step_time_phase_I_s": 0.05,
    "step_time_phase_II_s": 0.05,
    "step_time_phase_III_s": 0.05,
}
POLICIES = {  # stage family -> the validation scenario its points come from
    "alisa-device": "validation/alisa-device",
    "alisa-host": "validation/alisa",
    "dense-gpu": "validation/dense-gpu",
    "flexgen": "validation/flexgen",
}


def _phases(r: dict[str, Any]) -> tuple[int, int, int]:
    ph = r["phases"]
    return ph["I"]["steps"], ph["II"]["steps"], ph["III"]["steps"]


def real_backend_refusal(case: dict[str, Any], profile: str, gen: int) -> str | None:
    """Why the real backend would refuse this point at this generation length in any
    family's scenario (e.g. SWA attending more tokens than the GPU cache holds), or None."""
    from alisa.runtime.executor import check_supported  # torch: the routine runs beside it
    from alisa.sim.policies import make_policy

    for family, base in POLICIES.items():
        sc = load_scenario(resolve_scenario(base), _sets(_family_case(family, case), profile, gen))
        try:
            check_supported(sc, make_policy(sc))
        except InputError as e:
            return f"{family}: {e}"
    return None


def choose_gen(base: str, case: dict[str, Any], profile: str) -> tuple[int, dict[str, Any]]:
    """The shortest candidate generation length at which the device-gather ALISA point has
    at least 5% of its steps in Phase II and in Phase III (the longest if none does), among
    those the real backend runs: a profile that moves the phases can make the longest
    candidate one whose SWA budget outgrows the point's GPU cache (a lent H100, 2026-12-06)."""
    last: tuple[int, dict[str, Any]] | None = None
    first_refusal = ""
    for gen in GEN_CANDIDATES:
        refusal = real_backend_refusal(case, profile, gen)
        if refusal is not None:
            first_refusal = first_refusal or f"gen {gen}: {refusal}"
            continue
        sets = _sets(case, profile, gen)
        r, _ = simulate(load_scenario(resolve_scenario(base), sets))
        _, p2, p3 = _phases(r)
        steps = sum(_phases(r))
        last = gen, r
        if p2 >= 0.05 * steps and p3 >= 0.05 * steps:
            return gen, r
    if last is None:
        # an impossible point: one line naming it and why, exit 2
        print(
            f"gpu_routine: point {case['name']}: no generation length the real backend runs; {first_refusal}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return last


def _family_case(family: str, case: dict[str, Any]) -> dict[str, Any]:
    """A point's settings as a family's scenario takes them: ALISA's policy settings (the
    off-matrix KV budgets) apply to the ALISA families only."""
    return {k: v for k, v in case.items() if family.startswith("alisa") or not k.startswith("policy.")}


def _sets(case: dict[str, Any], profile: str, gen: int) -> list[str]:
    out = [f"hardware={profile}", "sweep=null", f"workload.gen_len={gen}"]
    for k, v in case.items():
        out.append(f"{k}={v}")
    return out


@dataclass
class Point:
    name: str
    case: dict[str, Any]
    gen: int
    phases: tuple[int, int, int]
    off_matrix: bool


@dataclass
class Stage:
    name: str  # e.g. alisa-device-r1
    family: str  # key of POLICIES, or "calibrate"
    repeat: int
    estimate_s: float
    points: list[str] = field(default_factory=list)


def points(profile: str) -> list[Point]:
    out = []
    cases: list[dict[str, Any]] = [
        {"name": f"{m}-b{b}", "model": m, "workload.batch_size": b} for m in MODELS for b in BATCHES
    ]
    for case, off in [(c, False) for c in cases] + [(dict(c), True) for c in OFF_MATRIX]:
        gen, r = choose_gen(POLICIES["alisa-device"], case, profile)
        out.append(Point(str(case["name"]), case, gen, _phases(r), off))
    return out


def scenario_file(family: str, pts: list[Point], profile: str, folder: Path) -> Path:
    """The family's validation scenario with the routine's points as sweep cases."""
    data = yaml.safe_load(resolve_scenario(POLICIES[family]).read_text())
    data["hardware"] = profile
    if not family.startswith("alisa"):  # the matrix only: the off-matrix points vary ALISA's budget
        pts = [p for p in pts if not p.off_matrix]
    data["sweep"] = {"cases": [{**p.case, "workload.gen_len": p.gen} for p in pts]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"routine-{family}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def stages(profile: str, pts: list[Point], calibrate: bool) -> list[Stage]:
    """Every stage with its estimate, in the order they run."""
    out = [Stage("calibrate", "calibrate", 0, CALIBRATE_S)] if calibrate else []
    for family in POLICIES:
        fam_pts = pts if family.startswith("alisa") else [p for p in pts if not p.off_matrix]
        est = 0.0
        for p in fam_pts:
            sets = _sets(_family_case(family, p.case), profile, p.gen)
            sc = load_scenario(resolve_scenario(POLICIES[family]), sets)
            r, _ = simulate(sc)
            est += RUN_OVERHEAD_S + 1.1 * r["total_time_s"]  # the rehearsal runs the prefill and two steps
        for rep in (1, 2):
            out.append(Stage(f"{family}-r{rep}", family, rep, est, [p.name for p in fam_pts]))
    return out


def pack(sts: list[Stage]) -> list[list[Stage]]:
    """Stages in order into calls of at most CALL_LIMIT_S each."""
    calls: list[list[Stage]] = [[]]
    for s in sts:
        if calls[-1] and sum(x.estimate_s for x in calls[-1]) + s.estimate_s > CALL_LIMIT_S:
            calls.append([])
        calls[-1].append(s)
    return calls


def plan(profile: str, calibrate: bool = True) -> dict[str, Any]:
    pts = points(profile)
    calls = pack(stages(profile, pts, calibrate))
    return {
        "profile": profile,
        "points": [vars(p) for p in pts],
        "calls": [[vars(s) for s in c] for c in calls],
        "call_estimates_s": [sum(s.estimate_s for s in c) for c in calls],
        "total_estimate_s": sum(s.estimate_s for c in calls for s in c),
    }


def _run_stage(s: Stage, pts: list[Point], profile: str, out: Path) -> int:
    """Run one stage into ``out``; its exit status (a failed point's stage goes on with the
    others and is archived without it)."""
    if s.family == "calibrate":
        prof = out / f"{profile}.yaml"
        subprocess.run(["alisa", "calibrate", "--name", profile, "--out", str(prof)], check=True)
        STASH.mkdir(parents=True, exist_ok=True)
        for f in (prof, prof.with_suffix(".measurements.json")):  # later stages and calls plan with it
            (ROOT / "hardware_profiles" / f.name).write_bytes(f.read_bytes())
            (STASH / f.name).write_bytes(f.read_bytes())
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        scen = scenario_file(s.family, pts, profile, Path(tmp))
        runs = Path(tmp) / "runs"
        # a point that fails still leaves the others' runs: archive them, and say so
        done = subprocess.run(["alisa", "validate", str(scen), "--real-only", "--out", str(runs)])
        if runs.is_dir():
            with tarfile.open(out / f"{s.name}.tgz", "w:gz") as tf:
                tf.add(runs, arcname=".")
                # the profile these runs were planned with: validate times their plans, not another's
                tf.add(profile_path(profile), arcname=PLANNED_WITH)
        return done.returncode


def run(out: Path, call: int, profile: str, only: list[str] | None = None) -> int:
    """Call ``call`` of the plan. Call 1 calibrates first and plans with the profile it
    writes; later calls plan with that profile, which must be in hardware_profiles/ (copy
    it there from call 1's OUT), so every call agrees on the points and the packing."""
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict[str, Any]] = []
    if call == 1:
        t0 = time.time()
        _run_stage(Stage("calibrate", "calibrate", 0, CALIBRATE_S), [], profile, out)
        log.append({"stage": "calibrate", "estimate_s": CALIBRATE_S, "wall_s": time.time() - t0})
    if call > 1 and (STASH / f"{profile}.yaml").is_file():
        # a later call on the same warm machine: the working tree came again, without call 1's
        # profile or with an older one of the same name; this machine's calibration wins
        for f in STASH.glob(f"{profile}.*"):
            (ROOT / "hardware_profiles" / f.name).write_bytes(f.read_bytes())
    if profile not in profile_names():
        raise SystemExit(f"no profile {profile} in hardware_profiles/: copy call 1's {profile}.yaml there first")
    p = plan(profile)
    if call > len(p["calls"]):
        raise SystemExit(f"the plan has {len(p['calls'])} calls")
    pts = points(profile)
    # --only: these stages in the order named, wherever the plan put them (a lease with
    # less time left: first runs of every family before any repeat, so a stopped call
    # loses a repeat)
    by_name = {sd["name"]: sd for c in p["calls"] for sd in c}
    todo = [by_name[n] for n in only if n in by_name] if only else p["calls"][call - 1]
    failed = []
    for sd in todo:
        st = Stage(**sd)
        if st.family == "calibrate":
            continue
        t0 = time.time()
        rc = _run_stage(st, pts, profile, out)
        log.append({"stage": st.name, "estimate_s": st.estimate_s, "wall_s": time.time() - t0, "rc": rc})
        (out / f"routine-call{call}.json").write_text(json.dumps({"plan": p, "log": log}, indent=1))
        if rc:  # the lease's other stages still run
            failed.append(st.name)
    if failed:
        print(f"gpu_routine: stages with a failed point: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _datasheet_for(profile: str) -> str:
    """Before calibration: the datasheet profile of the lent GPU's family."""
    for name in ("h200-141gb", "h100-80gb"):
        if profile.startswith(name.split("-")[0]):
            return name
    return "h100-80gb"


def _planned_with(stage: str, d: Path, rules: list[tuple[str, str]], default: str) -> str:
    """The profile a stage's runs were planned with: the copy its archive carries, else
    the first ``--planned-with PATTERN=PROFILE`` rule matching the stage (archives made
    before they carried one), else the timing profile."""
    if (d / PLANNED_WITH).is_file():
        return str(d / PLANNED_WITH)
    return next((prof for pat, prof in rules if fnmatch.fnmatch(stage, pat)), default)


def validate(outs: list[Path], profile: str, planned_with: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Unpack every stage's runs and compare each family's points with their runs. The
    simulator plans each run as it was planned (its stage's profile) and times it with
    ``profile``, the lent GPU's calibration; a family whose repeats were planned with
    different profiles is reported per planning profile (key ``family@fingerprint``)."""
    timing_fp = load_profile(profile).fingerprint()
    work = Path(tempfile.mkdtemp(prefix="routine-"))
    report: dict[str, Any] = {"profile": profile, "fingerprint": timing_fp, "families": {}}
    for family in POLICIES:
        groups: dict[str, tuple[str, list[Path]]] = {}  # planning fingerprint -> (profile, run folders)
        for rep in (1, 2):
            name = f"{family}-r{rep}"
            tgz = next((o / f"{name}.tgz" for o in outs if (o / f"{name}.tgz").is_file()), None)
            if tgz is None:
                continue
            d = work / name
            with tarfile.open(tgz) as tf:
                tf.extractall(d, filter="data")
            plan_prof = _planned_with(name, d, planned_with or [], profile)
            fp = load_profile(plan_prof).fingerprint()
            groups.setdefault(fp, (plan_prof, []))[1].append(d)
        for fp, (plan_prof, dirs) in groups.items():
            key = family if fp == timing_fp else f"{family}@{fp[:8]}"
            pts = points(plan_prof)
            scen = scenario_file(family, pts, plan_prof, work / key)
            res = work / f"validate-{key}"
            cmd = [sys.executable, "-m", "alisa.cli", "validate", str(scen), "--real-from", *map(str, dirs)]
            cmd += ["--out", str(res)] + (["--timing", profile] if fp != timing_fp else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"gpu_routine validate: {family}: {done.stderr.strip().splitlines()[-1]}")
            rows = [r for r in _csv(res / "validation.csv") if r["metric"] in TARGETS and r["error"] != ""]
            off = frozenset(p.name for p in pts if p.off_matrix)
            report["families"][key] = {
                **_verdicts(rows, len(dirs), off),
                "layers": _layer_medians(res),
                # an archive's own copy is named by its stage, not by where it was unpacked
                "planned_with": (f"{dirs[0].name}/{PLANNED_WITH}" if plan_prof.startswith(str(work)) else plan_prof)
                + ("" if fp == timing_fp else f" (fingerprint {fp})")
                + (", the timing profile" if fp == timing_fp else ""),
                "stages": [d.name for d in dirs],
            }
    return report


def _csv(path: Path) -> list[dict[str, Any]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _layer_medians(res: Path) -> dict[str, dict[str, float]]:
    """Per phase and part of a layer, the median over the family's points of the per-layer
    error (``alisa validate``'s ``layers``; the matrix and off-matrix points together)."""
    errs: dict[str, dict[str, list[float]]] = {}
    for f in sorted(res.glob("*/validation.json")):
        for ph, parts in json.loads(f.read_text()).get("layers", {}).items():
            for part, v in parts.items():
                if v.get("error") is not None:
                    errs.setdefault(ph, {}).setdefault(part, []).append(v["error"])
    return {ph: {k: statistics.median(v) for k, v in parts.items()} for ph, parts in errs.items()}


def _point_name(label: str) -> str:
    """A point's name from its run folder's label (the sweep case's name comes first)."""
    return label.split("_")[0]


def _verdicts(rows: list[dict[str, Any]], runs: int, off_matrix: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Each point's metrics with their verdicts; medians over the matrix's points and,
    apart, over the off-matrix ones (``off_matrix``: their point names)."""
    per_point: dict[str, dict[str, Any]] = {}
    for r in rows:
        err = float(r["error"])
        real, lo, hi = float(r["real"]), float(r["real_min"] or r["real"]), float(r["real_max"] or r["real"])
        # one run has no spread to be inside of
        spread = ((hi - lo) / abs(real) if real else 0.0) if runs > 1 else None
        target = TARGETS[r["metric"]]
        verdict = (
            "met" if abs(err) <= target else "within spread" if spread is not None and abs(err) <= spread else "missed"
        )
        per_point.setdefault(r["scenario"], {})[r["metric"]] = {
            "error": err,
            "spread": spread,
            "target": target,
            "verdict": verdict,
        }

    def medians(points: list[dict[str, Any]]) -> dict[str, float]:
        return {
            m: statistics.median(abs(p[m]["error"]) for p in points if m in p)
            for m in TARGETS
            if any(m in p for p in points)
        }

    off = [p for label, p in per_point.items() if _point_name(label) in off_matrix]
    on = [p for label, p in per_point.items() if _point_name(label) not in off_matrix]
    return {
        "runs": runs,
        "points": per_point,
        "median_abs_error": medians(on),
        "median_abs_error_off_matrix": medians(off),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("plan", "run", "validate"))
    ap.add_argument("out", nargs="*")
    ap.add_argument(
        "--profile",
        default=os.environ.get("PROFILE", "h100-80gb-measured"),
        help="the lent GPU's calibrated profile (written by call 1)",
    )
    ap.add_argument("--call", type=int, default=1)
    ap.add_argument("--only", default="", help="run these stages (comma-separated names) instead of the call's")
    ap.add_argument(
        "--planned-with",
        action="append",
        default=[],
        metavar="STAGE_PATTERN=PROFILE",
        help="validate: stages whose archive carries no planning profile were planned with PROFILE "
        "(first matching pattern wins; default: --profile)",
    )
    ap.add_argument("--json", type=Path, help="validate: also write the report as JSON")
    args = ap.parse_args(argv)
    if args.what == "plan":
        prof = args.profile if args.profile in profile_names() else _datasheet_for(args.profile)
        p = plan(prof)
        print(f"points on {prof} (generation length: Phase II and III each >= 5% of the steps):")
        for pt in p["points"]:
            print(
                f"  {pt['name']:20s} gen {pt['gen']:5d}  phases I/II/III {pt['phases']}"
                f"{'  (off the matrix)' if pt['off_matrix'] else ''}"
            )
        for i, (c, est) in enumerate(zip(p["calls"], p["call_estimates_s"], strict=True), 1):
            print(f"call {i}: {', '.join(s['name'] for s in c)}  ~{est / 60:.1f} min")
        print(f"total ~{p['total_estimate_s'] / 60:.1f} min of device time, plus a machine start (~2 min) per lease")
        return 0
    if args.what == "run":
        only = [x for x in args.only.split(",") if x]
        return run(Path(args.out[0] if args.out else "routine-out"), args.call, args.profile, only)
    rules = [tuple(r.split("=", 1)) for r in args.planned_with]
    if any(len(r) != 2 for r in rules):
        ap.error("--planned-with takes STAGE_PATTERN=PROFILE")
    try:
        rep = validate([Path(o) for o in args.out], args.profile, rules)
    except InputError as e:  # a profile that does not load: one line, exit 2
        print(f"gpu_routine validate: {e.message()}", file=sys.stderr)
        return 2
    print(render(rep))
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1))
    return 0


def render(rep: dict[str, Any]) -> str:
    """The report as tables: per family, each point's error per metric with its verdict."""
    short = {"throughput_tokens_per_s": "throughput"}
    short.update({f"step_time_phase_{p}_s": f"phase {p}" for p in ("I", "II", "III")})
    lines = [f"timed with {rep['profile']} (fingerprint {rep['fingerprint']})"]
    lines.append("error = (simulated - measured) / measured [the point's run-to-run spread]")
    mark = {"met": "", "within spread": " (in spread)", "missed": " MISSED"}
    for key, fam in rep["families"].items():
        runs = f"{fam['runs']} run(s) per point ({', '.join(fam['stages'])})"
        lines += ["", f"{key}: {runs}, planned with {fam['planned_with']}"]
        for label, metrics in fam["points"].items():
            cells = [
                f"{short[m]} {100 * v['error']:+.1f}%"
                + (f" [spread {100 * v['spread']:.1f}%]" if v["spread"] is not None else "")
                + mark[v["verdict"]]
                for m, v in metrics.items()
            ]
            lines.append(f"  {_point_name(label):18s} " + "; ".join(cells))
        for what, meds in (("matrix", fam["median_abs_error"]), ("off the matrix", fam["median_abs_error_off_matrix"])):
            if meds:
                lines.append(
                    f"  median |error|, {what}: " + ", ".join(f"{short[m]} {100 * v:.1f}%" for m, v in meds.items())
                )
        for ph, parts in fam.get("layers", {}).items():
            lines.append(
                f"  per layer, phase {ph} (median signed error over the points): "
                + ", ".join(f"{k} {100 * v:+.1f}%" for k, v in parts.items())
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
