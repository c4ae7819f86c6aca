"""Simulated against measured: the same scenario through both backends, compared metric
by metric from the files each wrote (result.json, steps.csv), so one reader serves both.

Errors are signed, (simulated - measured) / measured. Peak GPU memory compares the
allocator's peak with the simulator's peak less the profile's fixed reserve for the CUDA
context and allocator slack (which torch's allocator does not count).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alisa.sim.hardware import GB

PHASES = ("I", "II", "III")


@dataclass(frozen=True)
class Metric:
    """One metric, simulated against measured. With repeated measured runs, ``real`` is
    their median and ``real_min``/``real_max`` their range."""

    name: str
    sim: float
    real: float
    real_min: float | None = None
    real_max: float | None = None
    repeats: int = 1

    @property
    def error(self) -> float | None:
        if self.real == 0:
            return 0.0 if self.sim == 0 else None
        return (self.sim - self.real) / self.real


def read_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    result = json.loads((folder / "result.json").read_text())
    with open(folder / "steps.csv", newline="") as f:
        steps = [dict(r) for r in csv.DictReader(f)]
    for r in steps:
        for k in ("step", "context_len"):
            r[k] = int(r[k])
        r["time_s"] = float(r["time_s"])
    return result, steps


def mean_step_s(result: dict[str, Any], phase: str) -> float | None:
    p = result["phases"][phase]
    return p["time_s"] / p["steps"] if p["steps"] else None


def compare(sim: dict[str, Any], real: dict[str, Any]) -> list[Metric]:
    reserved = sim["scenario"].get("gpu_reserved_bytes", 0)
    out = [
        Metric("throughput_tokens_per_s", sim["throughput_tokens_per_s"], real["throughput_tokens_per_s"]),
        Metric("prefill_time_s", sim["prefill_time_s"], real["prefill_time_s"]),
    ]
    for ph in PHASES:
        s, r = mean_step_s(sim, ph), mean_step_s(real, ph)
        if s is not None and r is not None:
            out.append(Metric(f"step_time_phase_{ph}_s", s, r))
    out += [
        Metric("h2d_bytes", sim["h2d_bytes"], real["h2d_bytes"]),
        Metric("d2h_bytes", sim["d2h_bytes"], real["d2h_bytes"]),
        Metric("peak_gpu_bytes", sim["peak_gpu_bytes"] - reserved, real["peak_gpu_bytes"]),
        Metric("peak_cpu_bytes", sim["peak_cpu_bytes"], real["peak_cpu_bytes"]),
    ]
    return out


def compare_repeats(sim: dict[str, Any], reals: list[dict[str, Any]]) -> list[Metric]:
    """``compare`` against several measured runs of one scenario (repeats, e.g. in separate
    processes): per metric the median of the runs' values, with their range. A metric
    counts only where every run has it."""
    per = [{m.name: m for m in compare(sim, r)} for r in reals]
    out = []
    for name, m in per[0].items():
        vals = [p[name].real for p in per if name in p]
        if len(vals) < len(per):
            continue
        out.append(Metric(name, m.sim, statistics.median(vals), min(vals), max(vals), len(vals)))
    return out


def step_series_median(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per decode step, the median step time over repeated runs (steps every run has)."""
    by = [{r["step"]: r["time_s"] for r in run} for run in runs]
    common = sorted(set(by[0]).intersection(*by[1:]))
    return [{"step": k, "time_s": statistics.median(b[k] for b in by)} for k in common]


def step_time_figure(
    sim_steps: list[dict[str, Any]],
    real_steps: list[dict[str, Any]],
    title: str,
    repeats: list[list[dict[str, Any]]] | None = None,
) -> bytes:
    """Simulated and measured step time over a run, and the error per step. With
    ``repeats`` (several measured runs), each is drawn thin and ``real_steps`` (their
    median) is the measured line the error is taken against."""
    from alisa.sim.plots import plt, png_bytes

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    for i, run in enumerate(repeats or []):
        ax.plot(
            [r["step"] for r in run],
            [1e3 * r["time_s"] for r in run],
            lw=0.4,
            color="0.6",
            alpha=0.7,
            label="measured runs" if i == 0 else None,
        )
    ax.plot(
        [r["step"] for r in real_steps],
        [1e3 * r["time_s"] for r in real_steps],
        lw=0.8,
        label="measured (median of runs)" if repeats else "measured",
    )
    ax.plot([r["step"] for r in sim_steps], [1e3 * r["time_s"] for r in sim_steps], lw=0.8, label="simulated")
    ax.set_ylabel("step time (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    real_by = {r["step"]: r["time_s"] for r in real_steps}
    xs, es = [], []
    for r in sim_steps:
        m = real_by.get(r["step"])
        if m:
            xs.append(r["step"])
            es.append(100 * (r["time_s"] - m) / m)
    ax2.plot(xs, es, lw=0.6, color="C3")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set_ylabel("error (%)")
    ax2.set_xlabel("decode step")
    return png_bytes(fig)


def _median_worst(
    rows: list[dict[str, Any]], value: Callable[[dict[str, Any]], float | None], name: str
) -> dict[str, Any]:
    """Per metric, over the scenarios where ``value`` gives a number: how many, its median
    and worst (as ``median_<name>``, ``worst_<name>``), and the worst scenario."""
    by: dict[str, list[tuple[float, str]]] = {}
    for r in rows:
        v = value(r)
        if v is not None and math.isfinite(v):
            by.setdefault(r["metric"], []).append((v, r["scenario"]))
    out = {}
    for k, vals in by.items():
        worst = max(vals)
        out[k] = {
            "n": len(vals),
            f"median_{name}": statistics.median(e for e, _ in vals),
            f"worst_{name}": worst[0],
            "worst_scenario": worst[1],
        }
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and worst |error| per metric over the scenarios that have it."""
    return _median_worst(rows, lambda r: None if r["error"] is None else abs(r["error"]), "abs_error")


def summarize_spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The measured side's own spread per metric, where points were measured more than
    once: (max - min) / median of the runs, its median and worst over the points. An
    error smaller than this spread cannot be told from run-to-run variation."""
    return _median_worst(
        rows,
        lambda r: (r["real_max"] - r["real_min"]) / abs(r["real"]) if r.get("repeats", 1) > 1 and r["real"] else None,
        "spread",
    )


def fmt_value(name: str, v: float) -> str:
    if name.endswith("_bytes"):
        return f"{v / GB:.3f} GB"
    if name.endswith("_time_s") or name.startswith("step_time"):
        return f"{1e3 * v:.3f} ms"
    return f"{v:.1f}"


# -- per layer: where a step's time goes, simulated against measured --------------------------

LAYER_PARTS = ("compute", "wait", "h2d", "host_gather")


def layer_parts(events: Any) -> dict[tuple[int, int], dict[str, float]]:
    """Per (decode step, layer) of a run's trace events, (lane, name, start, seconds, args)
    as ``EventLog`` holds them: the GPU's compute on the layer less its waits for fetched
    rows (the executor's layer span holds them), those waits, the H2D span (a copy, or the
    device gather's kernel) and its bytes, and the host's gather, in seconds."""
    out: dict[tuple[int, int], dict[str, float]] = {}
    for lane, name, _, dur, args in events:
        step = args.get("step", -1)
        if step is None or step < 0:
            continue
        if lane == "GPU compute" and name.startswith("wait copy L"):
            part, layer = "wait", name[len("wait copy L") :]
        elif lane == "GPU compute" and name[:1] == "L":
            part, layer = "layer", name[1:]
        elif lane == "H2D" and name[:1] == "L":
            part, layer = "h2d", name[1:]
        elif lane in ("CPU", "Host") and name.startswith("gather L"):
            part, layer = "host_gather", name[len("gather L") :]
        else:
            continue
        if layer.isdigit():
            d = out.setdefault((int(step), int(layer)), {})
            d[part] = d.get(part, 0.0) + dur
            if part == "h2d":
                d["bytes"] = d.get("bytes", 0.0) + float(args.get("bytes", 0))
    for d in out.values():
        d["compute"] = d.pop("layer", 0.0) - d.get("wait", 0.0)
    return out


def _trace_layers(folder: Path) -> dict[tuple[int, int], dict[str, float]]:
    """``layer_parts`` of a run folder's trace.json (Chrome trace, microseconds)."""
    doc = json.loads((folder / "trace.json").read_text())
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    lanes = {e.get("tid"): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    return layer_parts(
        (lanes.get(e.get("tid"), ""), e["name"], e["ts"] * 1e-6, e["dur"] * 1e-6, e.get("args", {}))
        for e in events
        if e.get("ph") == "X"
    )


def layer_breakdown(sim_dir: Path, real_dir: Path) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Per phase, per part of a layer (``LAYER_PARTS``): the median over the decode steps
    both traces hold and their layers, simulated against measured. The simulator's
    compute never waits (its waits are in the step's span), so ``wait`` is measured only."""
    _, steps = read_run(real_dir)
    phase = {r["step"]: r["phase"] for r in steps}
    sim, real = _trace_layers(sim_dir), _trace_layers(real_dir)
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for ph in PHASES:
        keys = [k for k in real if k in sim and phase.get(k[0]) == ph]
        if not keys:
            continue
        parts: dict[str, dict[str, float | int | None]] = {}
        for part in LAYER_PARTS:
            r = [real[k].get(part, 0.0) for k in keys]
            s = [sim[k].get(part, 0.0) for k in keys]
            if not any(r) and not any(s):
                continue
            rm, sm = statistics.median(r), statistics.median(s)
            err = (sm - rm) / rm if rm > 0 and part != "wait" else None
            parts[part] = {"sim_s": sm, "real_s": rm, "error": err, "n": len(keys)}
        out[ph] = parts
    return out
