"""Sweeps: every point of a scenario's Cartesian product, run on a process pool."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from .atomic import write_folder
from .errors import InputError
from .results import scenario_summary
from .runner import simulate
from .scenario import Scenario

METRICS = (
    "policy",
    "oom",
    "oom_reason",
    "throughput_tokens_per_s",
    "total_time_s",
    "prefill_time_s",
    "decode_time_s",
    "phase_I_steps",
    "phase_II_steps",
    "phase_III_steps",
    "peak_gpu_bytes",
    "peak_cpu_bytes",
    "h2d_bytes",
    "d2h_bytes",
    "recomputed_tokens",
    "sim_wall_s",
)


def flat_row(params: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        f"param:{k}": (v.get("name", json.dumps(v)) if isinstance(v, dict) else v) for k, v in params.items()
    }
    for k in METRICS:
        if k.startswith("phase_"):
            _, ph, _ = k.split("_")
            row[k] = result["phases"][ph]["steps"]
        else:
            row[k] = result[k]
    return row


def _run_point(i: int, sc: Scenario) -> tuple[int, dict[str, Any]]:
    """One point; a point that cannot be planned (an infeasible FlexGen LP) becomes a row
    that says why, so one bad corner does not sink the sweep."""
    try:
        result, _ = simulate(sc)
    except InputError as e:
        result = {
            "scenario": scenario_summary(sc),
            "policy": sc.policy.name,
            "oom": True,
            "oom_pool": "plan",
            "oom_reason": e.reason,
            "throughput_tokens_per_s": 0.0,
            "total_time_s": 0.0,
            "prefill_time_s": 0.0,
            "decode_time_s": 0.0,
            "phases": {p: {"steps": 0, "time_s": 0.0} for p in ("I", "II", "III")},
            "peak_gpu_bytes": 0,
            "peak_cpu_bytes": 0,
            "h2d_bytes": 0,
            "d2h_bytes": 0,
            "recomputed_tokens": 0,
            "sim_wall_s": 0.0,
        }
    return i, result


def run_points(
    points: list[tuple[dict[str, Any], Scenario]], jobs: int | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
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


def run_sweep(
    points: list[tuple[dict[str, Any], Scenario]],
    out: Path,
    jobs: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[dict[str, Any]]:
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
    files = {
        "sweep.csv": buf.getvalue().encode(),
        "sweep.json": json.dumps([results[i] for i in range(len(points))], indent=1).encode(),
    }
    png = grouped_bars(rows, str(out.name))
    if png:
        files["sweep.png"] = png
    write_folder(out, files)
    return rows


def grouped_bars(rows: list[dict[str, Any]], title: str) -> bytes | None:
    """Throughput per policy (bars) for each combination of the other swept fields (groups)."""
    keys = [k for k in rows[0] if k.startswith("param:")]
    if len({r["policy"] for r in rows}) < 2:
        return None
    import matplotlib.pyplot as plt
    import numpy as np

    from .plots import png_bytes

    group_keys = [k for k in keys if k != "param:policy"]
    label = lambda r: "\n".join(f"{k.removeprefix('param:').split('.')[-1]}={r[k]}" for k in group_keys) or "all"  # noqa: E731
    groups = list(dict.fromkeys(label(r) for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    width = 0.8 / len(policies)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups) * max(1, len(policies) / 3)), 4.2))
    x = np.arange(len(groups))
    for j, pol in enumerate(policies):
        ys = []
        for g in groups:
            v = [r["throughput_tokens_per_s"] for r in rows if r["policy"] == pol and label(r) == g]
            ys.append(v[0] if v else 0.0)
        bars = ax.bar(x + (j - (len(policies) - 1) / 2) * width, ys, width, label=pol)
        for b, y in zip(bars, ys, strict=True):
            if y == 0:
                ax.text(b.get_x() + b.get_width() / 2, 0, "OOM", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(x, groups, fontsize=7)
    ax.set_ylabel("throughput (tokens/s)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return png_bytes(fig)
