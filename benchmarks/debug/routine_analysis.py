"""A routine archive's runs looked at three more ways (docs/validation.md cites each):

    python benchmarks/debug/routine_analysis.py ablate ARCHIVE --profile PROFILE
    python benchmarks/debug/routine_analysis.py dense-growth ARCHIVE --profile PROFILE
    python benchmarks/debug/routine_analysis.py traced-steps ARCHIVE

* ``ablate``: every family's runs re-timed (``alisa validate --timing``) by the profile as
  it is, without its ``attention_decode_contiguous`` table, with the cost tables' old
  log-log chord, and with both: the median |error| of each over the matrix.
* ``dense-growth``: per dense-gpu point, how fast a layer's time grows with the context
  (µs per token, over the traced steps) in the executor and the simulator, and the rest of
  the step beside the layers.
* ``traced-steps``: per device-gather ALISA run, each traced decode step's time against
  the median of its untraced neighbours in the same phase, and its waits for the gather.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_routine as routine  # noqa: E402
from table_interpolation import loglog  # noqa: E402

from alisa.cli import main as alisa_main  # noqa: E402
from alisa.sim import costs  # noqa: E402


def _unpack(archive: Path, stage: str, work: Path) -> Path:
    d = work / stage
    with tarfile.open(archive / f"{stage}.tgz") as tf:
        tf.extractall(d, filter="data")
    return d


def _medians(archive: Path, timing: Path, work: Path) -> dict[str, dict[str, float]]:
    out = {}
    for fam in routine.POLICIES:
        dirs = [_unpack(archive, f"{fam}-r{r}", work / timing.stem) for r in (1, 2)]
        planned = str(dirs[0] / routine.PLANNED_WITH)
        pts = routine.points(planned)
        scen = routine.scenario_file(fam, pts, planned, work / timing.stem / fam)
        res = work / timing.stem / f"res-{fam}"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = ["validate", str(scen), "--real-from", *map(str, dirs), "--out", str(res), "--timing", str(timing)]
            alisa_main(args)
        rows = [r for r in routine._csv(res / "validation.csv") if r["metric"] in routine.TARGETS and r["error"] != ""]
        v = routine._verdicts(rows, 2, frozenset(p.name for p in pts if p.off_matrix))
        out[fam] = {k: round(100 * x, 1) for k, x in v["median_abs_error"].items()}
    return out


def ablate(archive: Path, profile: Path) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="ablate-"))
    prof = yaml.safe_load(profile.read_text())
    whole = work / "as-is.yaml"
    whole.write_text(yaml.safe_dump(prof))
    prof["tables"].pop("attention_decode_contiguous", None)
    nocontig = work / "nocontig.yaml"
    nocontig.write_text(yaml.safe_dump(prof))
    lines = []
    for timing in (whole, nocontig):
        lines.append(f"linear {timing.stem} {json.dumps(_medians(archive, timing, work / 'linear'))}")
    # the cost model's chord before 4c4b224, in this process only
    old = mock.patch.object(costs._Interp, "__call__", lambda self, size: loglog(list(self.x), list(self.y), size))
    with old:
        for timing in (whole, nocontig):
            lines.append(f"loglog {timing.stem} {json.dumps(_medians(archive, timing, work / 'loglog'))}")
    return lines


def _layers_per_step(trace: Path) -> dict[int, tuple[float, float, float]]:
    """Per fully traced decode step: (mean layer µs, rest of the step µs, context)."""
    ev = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    out = {}
    for s in (e for e in ev if e["name"].startswith("step ")):
        layers = [
            e["dur"]
            for e in ev
            if e.get("tid") == 0 and e["name"][:1] == "L" and s["ts"] <= e["ts"] < s["ts"] + s["dur"]
        ]
        if layers:
            out[int(s["name"].split()[1])] = (statistics.mean(layers), s["dur"] - sum(layers), s["args"]["context_len"])
    return out


def dense_growth(archive: Path, profile: Path) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="dense-"))
    d = _unpack(archive, "dense-gpu-r1", work)
    lines = ["point: layer growth per token of context, executor / simulator (µs); rest of the step (µs)"]
    for real in sorted(d.glob("*/real")):
        sim_dir = work / "sim" / real.parent.name
        scen = json.loads((real / "result.json").read_text())["scenario"]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            sets = [f"hardware={profile}", "sweep=null", f"model={scen['model']}"]
            sets += [f"workload.{k}={scen['workload'][k]}" for k in ("batch_size", "prompt_len", "gen_len")]
            alisa_main(["run", "validation/dense-gpu", "--out", str(sim_dir), *(a for x in sets for a in ("--set", x))])
        r, s = _layers_per_step(real / "trace.json"), _layers_per_step(sim_dir / "trace.json")
        steps = sorted(k for k in r if k in s)
        a, z = steps[4], steps[-1]  # past the first steps' warm-up
        slope = [(x[z][0] - x[a][0]) / (x[z][2] - x[a][2]) for x in (r, s)]
        rest = [statistics.median(x[k][1] for k in steps) for x in (r, s)]
        lines.append(
            f"{real.parent.name.split('_')[0]:14s} growth {slope[0]:.4f} / {slope[1]:.4f}"
            f" ({100 * (slope[1] / slope[0] - 1):+.0f} %); rest {rest[0]:.0f} / {rest[1]:.0f}"
        )
    return lines


def traced_steps(archive: Path) -> list[str]:
    import csv

    work = Path(tempfile.mkdtemp(prefix="traced-"))
    lines = ["run point: (traced step - median of untraced neighbours) / its waits, µs"]
    for rep in (1, 2):
        d = _unpack(archive, f"alisa-device-r{rep}", work)
        for real in sorted(d.glob("*/real")):
            ev = [e for e in json.loads((real / "trace.json").read_text())["traceEvents"] if e.get("ph") == "X"]
            traced = sorted({e["args"]["step"] for e in ev if e.get("tid") == 0 and e["name"][:1] == "L"})
            waits: dict[int, float] = {}
            for e in ev:
                if e["name"].startswith("wait copy"):
                    waits[e["args"]["step"]] = waits.get(e["args"]["step"], 0.0) + e["dur"]
            with open(real / "steps.csv", newline="") as f:
                rows = {int(r["step"]): r for r in csv.DictReader(f)}
            cells = []
            for s in (s for s in traced if s >= 10):  # past the first Phase II steps' warm-up
                near = [
                    float(rows[k]["time_s"]) * 1e6
                    for k in range(s - 3, s + 4)
                    if k in rows and k not in traced and rows[k]["phase"] == rows[s]["phase"]
                ]
                if len(near) >= 4:
                    diff = float(rows[s]["time_s"]) * 1e6 - statistics.median(near)
                    cells.append(f"{diff:+.0f}/{waits.get(s, 0.0):.0f}")
            lines.append(f"r{rep} {real.parent.name.split('_')[0]:16s} " + " ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("ablate", "dense-growth", "traced-steps"))
    ap.add_argument("archive", type=Path)
    ap.add_argument("--profile", type=Path, default=ROOT / "hardware_profiles" / "h100-80gb-measured.yaml")
    args = ap.parse_args(argv)
    run: dict[str, Any] = {
        "ablate": lambda: ablate(args.archive, args.profile),
        "dense-growth": lambda: dense_growth(args.archive, args.profile),
        "traced-steps": lambda: traced_steps(args.archive),
    }
    print(f"# python benchmarks/debug/routine_analysis.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# {platform.node()}, {platform.processor() or platform.machine()}, {datetime.now(UTC).date().isoformat()}")
    print("\n".join(run[args.what]()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
