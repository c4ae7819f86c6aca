"""How a large sweep scales: the 10,000-point what-if grid (scenarios/sweeps/whatif-grid.yaml)
on the local process pool, then on a local Ray cluster of one node and of two nodes, each
node limited to one CPU and started by this script on loopback (``ray start --head`` plus
one ``ray start --address``); and the engine speed table (benchmarks/sim_speed.py).
Checks that every engine wrote the same sweep.csv. Prints a table; appends the record to
benchmarks/results/sweep_scale.json.

    python benchmarks/sweep_scale.py [--points N] [--jobs 2] [--skip-ray]

``--points N`` runs the grid's first N points (a smoke run); the recorded figure is the
whole grid.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import append_record
from sim_speed import engine_rows
from sim_speed import table as engine_table

from alisa.sim.bundled import resolve_scenario
from alisa.sim.scenario import load_scenario

GRID = "sweeps/whatif-grid"
PORT = 6391
# the head and the driver agree on no token authentication (a loopback-only test cluster)
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _sweep(out: Path, extra: list[str], sets: list[str], env: dict[str, str] | None = None) -> float:
    cmd = [sys.executable, "-m", "alisa.cli", "sweep", GRID, "--out", str(out), *extra, *(f"--set={s}" for s in sets)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"sweep failed ({' '.join(cmd)}):\n{p.stderr[-2000:]}")
    return wall


@contextlib.contextmanager
def ray_cluster(nodes: int) -> Iterator[str]:
    ray = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, **RAY_ENV}
    base = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    addr = f"127.0.0.1:{PORT}"
    subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)
    try:
        subprocess.run(
            [ray, "start", "--head", f"--port={PORT}", "--include-dashboard=false", *base],
            check=True,
            capture_output=True,
            env=env,
        )
        for _ in range(nodes - 1):
            subprocess.run([ray, "start", f"--address={addr}", *base], check=True, capture_output=True, env=env)
        yield addr
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)


def _digest(out: Path) -> str:
    return hashlib.sha256((out / "sweep.csv").read_bytes()).hexdigest()[:16]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=None, help="only the grid's first N points (a smoke run)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="pool workers (default: all cores)")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="engine speed table repeats")
    args = ap.parse_args()
    grid = load_scenario(resolve_scenario(GRID))
    sweep = dict(grid.sweep or {})
    n_all = 1
    for v in sweep.values():
        n_all *= len(v)
    sets: list[str] = []
    if args.points is not None and args.points < n_all:
        # a smaller grid: shorten the last lists first
        n = n_all
        for k in reversed(list(sweep)):
            while n > args.points and len(sweep[k]) > 1:
                n = n // len(sweep[k]) * (len(sweep[k]) - 1)
                sweep[k] = sweep[k][:-1]
        sets = [f"sweep={sweep}"]
    points = 1
    for v in sweep.values():
        points *= len(v)
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="sweep-scale-"))
    try:
        runs: list[tuple[str, list[str], dict[str, str] | None, int]] = [("pool", ["--jobs", str(args.jobs)], None, 0)]
        if not args.skip_ray:
            runs += [("ray", ["--engine", "ray"], RAY_ENV, 1), ("ray", ["--engine", "ray"], RAY_ENV, 2)]
        for engine, extra, env, nodes in runs:
            out = tmp / f"{engine}-{nodes}"
            label = (
                f"pool, {args.jobs} workers" if engine == "pool" else f"ray, {nodes} node{'s' * (nodes > 1)} x 1 CPU"
            )
            print(f"running {points} points: {label} ...", flush=True)
            if engine == "ray":
                with ray_cluster(nodes) as addr:
                    wall = _sweep(out, [*extra, "--address", addr], sets, env)
            else:
                wall = _sweep(out, extra, sets, env)
            rows.append(
                {
                    "engine": label,
                    "points": points,
                    "wall_s": wall,
                    "points_per_s": points / wall,
                    "sweep_csv_sha256": _digest(out),
                }
            )
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ray_rows = [r for r in rows if r["engine"].startswith("ray")]
    if len(ray_rows) == 2:
        ray_rows[1]["speedup_vs_one_node"] = ray_rows[0]["wall_s"] / ray_rows[1]["wall_s"]
    print(f"\n{'engine':28s} {'points':>7s} {'wall s':>8s} {'points/s':>9s}  sweep.csv")
    for r in rows:
        extra_s = f"  x{r['speedup_vs_one_node']:.2f} vs one node" if "speedup_vs_one_node" in r else ""
        print(
            f"{r['engine']:28s} {r['points']:7d} {r['wall_s']:8.1f} {r['points_per_s']:9.1f}  "
            f"{r['sweep_csv_sha256']}{extra_s}"
        )
    same = len({r["sweep_csv_sha256"] for r in rows}) == 1
    print(f"every engine wrote the same sweep.csv: {same}")
    eng = engine_rows(load_scenario(resolve_scenario("opt-13b-three-phase")), args.repeats)
    print("\nengine speed (one point, OPT-13B three phases)\n" + engine_table(eng))
    append_record(
        Path(__file__).parent / "results" / "sweep_scale.json",
        rows,
        {"grid": GRID, "grid_points": n_all, "same_csv": same, "engine_speed": eng},
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
