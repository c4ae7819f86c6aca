"""Sweeps: every point of a scenario's Cartesian product, run on a process pool."""

from __future__ import annotations

import csv
import io
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterator

from .atomic import write_text
from .runner import simulate
from .scenario import Scenario

METRICS = ("policy", "oom", "oom_reason", "throughput_tokens_per_s", "total_time_s", "prefill_time_s",
           "decode_time_s", "phase_I_steps", "phase_II_steps", "phase_III_steps", "peak_gpu_bytes",
           "peak_cpu_bytes", "h2d_bytes", "d2h_bytes", "recomputed_tokens", "sim_wall_s")


def flat_row(params: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {f"param:{k}": v for k, v in params.items()}
    for k in METRICS:
        if k.startswith("phase_"):
            _, ph, _ = k.split("_")
            row[k] = result["phases"][ph]["steps"]
        else:
            row[k] = result[k]
    return row


def _run_point(i: int, sc: Scenario) -> tuple[int, dict[str, Any]]:
    result, _ = simulate(sc)
    return i, result


def run_points(points: list[tuple[dict[str, Any], Scenario]], jobs: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (index, result) as points finish. jobs=1 runs in this process."""
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1 or len(points) == 1:
        for i, (_, sc) in enumerate(points):
            yield _run_point(i, sc)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(points))) as pool:
        futs = [pool.submit(_run_point, i, sc) for i, (_, sc) in enumerate(points)]
        for f in as_completed(futs):
            yield f.result()


def run_sweep(points: list[tuple[dict[str, Any], Scenario]], out: Path, jobs: int | None = None,
              progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    for i, res in run_points(points, jobs):
        results[i] = res
        if progress:
            progress(1)
    rows = [flat_row(points[i][0], results[i]) for i in range(len(points))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "sweep.csv", buf.getvalue())
    write_text(out / "sweep.json", json.dumps([results[i] for i in range(len(points))], indent=1))
    return rows
