"""Sweeps: every point of a scenario's Cartesian product, on a process pool or a Ray cluster.

Each point's result is written atomically to ``OUT/points/<key>.json`` the moment it
completes, where the key is a hash of the point's resolved scenario (and the engine it
was timed with). A sweep re-run into the same folder reuses every point whose file is
complete and valid and computes the rest, so an interrupted sweep resumes where it
stopped; a point that raises is recorded with its error (and tried again on a re-run)
without stopping the others. ``sweep.csv`` and ``sweep.json`` are assembled from the
point files in the sweep's order once all points have a result: they hold no wall
times, so the pool, Ray and a resumed run write the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_folder, write_text
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
    "token_latency_s",
    "phase_I_steps",
    "phase_II_steps",
    "phase_III_steps",
    "peak_gpu_bytes",
    "peak_cpu_bytes",
    "h2d_bytes",
    "d2h_bytes",
    "recomputed_tokens",
    "error",
)
ENGINES = ("pool", "ray")
POINT_FORMAT = 1  # bump when a point file's meaning changes: older files are then recomputed


@dataclass(frozen=True)
class Point:
    index: int
    params: dict[str, Any]
    scenario: Scenario
    key: str


@dataclass
class SweepReport:
    rows: list[dict[str, Any]]
    computed: int
    reused: int
    failed: list[int] = field(default_factory=list)  # indices whose point raised
    lost: list[int] = field(default_factory=list)  # indices with no result: a worker died


class SweepInterrupted(Exception):
    """Points were lost (a worker process died); those that finished are on disk."""

    def __init__(self, lost: int, out: Path) -> None:
        self.lost, self.out = lost, out
        super().__init__(
            f"{lost} point(s) did not finish (a worker died); the others are in {out / 'points'}: "
            "run the same command again to complete the sweep"
        )


def point_key(sc: Scenario, exact: bool) -> str:
    """A point's identity: its resolved scenario, the engine, the point format."""
    blob = json.dumps({"scenario": sc.model_dump(mode="json"), "exact": exact, "format": POINT_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def make_points(points: list[tuple[dict[str, Any], Scenario]], exact: bool = False) -> list[Point]:
    return [Point(i, params, sc, point_key(sc, exact)) for i, (params, sc) in enumerate(points)]


def token_latency_s(result: dict[str, Any]) -> float:
    """Mean time between a sequence's tokens: decode time over decode steps (0 if none)."""
    steps = sum(p["steps"] for p in result["phases"].values())
    return result["decode_time_s"] / steps if steps else 0.0


def evaluate(sc: Scenario, exact: bool = False) -> dict[str, Any]:
    """One point's result. A point that cannot be planned (an infeasible FlexGen LP) is a
    result that says why; any other exception is recorded as the point's error."""
    try:
        result, _ = simulate(sc, exact=exact)
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
            "sim_events": 0,
            "sim_wall_s": 0.0,
        }
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
    result["token_latency_s"] = token_latency_s(result)
    return result


def _evaluate_indexed(i: int, sc: Scenario, exact: bool) -> tuple[int, dict[str, Any]]:
    return i, evaluate(sc, exact)


# -- the journal: one file per point -------------------------------------------------------


def _point_path(out: Path, p: Point) -> Path:
    return out / "points" / f"{p.key}.json"


def read_point(out: Path, p: Point) -> dict[str, Any] | None:
    """A point's stored result, if its file is complete, valid and for this point; a
    recorded error does not count (the point is tried again)."""
    try:
        data = json.loads(_point_path(out, p).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != p.key or not isinstance(data.get("result"), dict):
        return None
    result = data["result"]
    if "error" in result or "throughput_tokens_per_s" not in result:
        return None
    return result


def write_point(out: Path, p: Point, result: dict[str, Any], wall_s: float | None = None) -> None:
    write_text(
        _point_path(out, p),
        json.dumps({"key": p.key, "index": p.index, "params": p.params, "wall_s": wall_s, "result": result}, indent=1),
    )


# -- engines ------------------------------------------------------------------------------------


def _serial(todo: list[Point], exact: bool) -> Iterator[tuple[int, dict[str, Any] | None]]:
    for p in todo:
        yield p.index, evaluate(p.scenario, exact)


def _pool(todo: list[Point], exact: bool, jobs: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """A process pool; a result of None: its worker died (the pool is then broken, and
    every point still in it is lost too)."""
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo))) as pool:
        futs = {pool.submit(_evaluate_indexed, p.index, p.scenario, exact): p.index for p in todo}
        for f in as_completed(futs):
            try:
                yield f.result()
            except BrokenProcessPool:
                yield futs[f], None


def _ray(
    todo: list[Point], exact: bool, jobs: int | None, address: str | None
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    from .deps import require

    require("ray", purpose="alisa sweep --engine ray")
    import ray

    started = not ray.is_initialized()
    if started:
        kw: dict[str, Any] = {"address": address} if address else {"num_cpus": jobs or os.cpu_count() or 1}
        ray.init(**kw, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        remote = ray.remote(max_retries=2)(_evaluate_indexed)  # a killed worker's point runs again
        pending = {remote.remote(p.index, p.scenario, exact): p.index for p in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception:
                    yield i, None
    finally:
        if started:
            ray.shutdown()


def evaluate_points(
    todo: list[Point], engine: str = "pool", jobs: int | None = None, address: str | None = None, exact: bool = False
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(index, result) as points finish, on the chosen engine; None: the point was lost."""
    jobs = jobs or os.cpu_count() or 1
    if engine == "ray":
        return _ray(todo, exact, jobs, address)
    if jobs == 1 or len(todo) <= 1:
        return _serial(todo, exact)
    return _pool(todo, exact, jobs)


def run_sweep(
    points: list[tuple[dict[str, Any], Scenario]],
    out: Path,
    jobs: int | None = None,
    progress: Callable[[int, bool], object] | None = None,
    engine: str = "pool",
    address: str | None = None,
    exact: bool = False,
) -> SweepReport:
    """Run (or resume) the sweep into ``out``. ``progress(1, failed)`` after each point.
    Raises SweepInterrupted when points were lost; the finished ones are on disk."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine '{engine}'; known: {', '.join(ENGINES)}", field="--engine")
    pts = make_points(points, exact)
    results: dict[int, dict[str, Any]] = {}
    for p in pts:
        stored = read_point(out, p)
        if stored is not None:
            results[p.index] = stored
    reused = len(results)
    if progress and reused:
        progress(reused, False)
    todo = [p for p in pts if p.index not in results]
    by_index = {p.index: p for p in pts}
    failed: list[int] = []
    lost: list[int] = []
    for i, res in evaluate_points(todo, engine, jobs, address, exact):
        if res is None:
            lost.append(i)
            continue
        results[i] = res
        write_point(out, by_index[i], res, wall_s=res.get("sim_wall_s"))
        bad = "error" in res
        if bad:
            failed.append(i)
        if progress:
            progress(1, bad)
    if lost:
        raise SweepInterrupted(len(lost), out)
    rows = [flat_row(p.params, results[p.index]) for p in pts]
    _write_summary(out, rows, [results[p.index] for p in pts])
    return SweepReport(rows, computed=len(todo), reused=reused, failed=sorted(failed))


def flat_row(params: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        f"param:{k}": (v.get("name", json.dumps(v)) if isinstance(v, dict) else v) for k, v in params.items()
    }
    for k in METRICS:
        if k == "error":
            row[k] = result.get("error", "")
        elif "error" in result:
            row[k] = ""
        elif k.startswith("phase_"):
            _, ph, _ = k.split("_")
            row[k] = result["phases"][ph]["steps"]
        else:
            row[k] = result[k]
    return row


def _deterministic(result: dict[str, Any]) -> dict[str, Any]:
    """A point's result without what differs from run to run (wall time, tracebacks)."""
    return {k: v for k, v in result.items() if k not in ("sim_wall_s", "traceback")}


def _write_summary(out: Path, rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    files = {
        "sweep.csv": buf.getvalue().encode(),
        "sweep.json": json.dumps([_deterministic(r) for r in results], indent=1, sort_keys=True).encode(),
    }
    png = grouped_bars(rows, str(out.name))
    if png:
        files["sweep.png"] = png
    write_folder(out, files)


def grouped_bars(rows: list[dict[str, Any]], title: str) -> bytes | None:
    """Throughput per policy (bars) for each combination of the other swept fields (groups)."""
    keys = [k for k in rows[0] if k.startswith("param:")]
    if len({r["policy"] for r in rows if not r["error"]}) < 2:
        return None
    import matplotlib.pyplot as plt
    import numpy as np

    from .plots import png_bytes

    group_keys = [k for k in keys if k != "param:policy"]

    def label(r: dict[str, Any]) -> str:
        return "\n".join(f"{k.removeprefix('param:').split('.')[-1]}={r[k]}" for k in group_keys) or "all"

    groups = list(dict.fromkeys(label(r) for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows if not r["error"]))
    width = 0.8 / len(policies)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups) * max(1, len(policies) / 3)), 4.2))
    x = np.arange(len(groups))
    for j, pol in enumerate(policies):
        ys = []
        for g in groups:
            v = [r["throughput_tokens_per_s"] for r in rows if r["policy"] == pol and label(r) == g and not r["error"]]
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
