"""result.json, steps.csv and trace.json: built from an engine run, written whole.

The real backend writes the same files (same fields), so one reader serves both.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from .atomic import write_folder, write_text
from .engine import LANES, EngineResult
from .hardware import GB
from .models import kv_bytes_per_token, weight_bytes
from .scenario import Scenario

SCHEMA_VERSION = 1
STEP_FIELDS = (
    "step",
    "phase",
    "start_s",
    "time_s",
    "context_len",
    "attended_tokens",
    "h2d_bytes",
    "d2h_bytes",
    "recomputed_tokens",
    "recompute_ratio",
    "gpu_bytes",
    "cpu_bytes",
)


def scenario_summary(sc: Scenario) -> dict[str, Any]:
    return {
        "name": sc.name,
        "model": sc.model.name,
        "hardware": sc.hardware.name,
        "hardware_source": sc.hardware.source,
        "hardware_fingerprint": sc.hardware.fingerprint(),
        "workload": sc.workload.model_dump(),
        "policy": sc.policy.model_dump(),
        "seed": sc.seed,
        "gpu_reserved_bytes": int(sc.hardware.gpu_reserved_gb * GB),
        "kv_bytes_per_token": kv_bytes_per_token(sc.model),
        "weight_bytes": weight_bytes(sc.model),
    }


def build_result(sc: Scenario, er: EngineResult, backend: str = "sim") -> dict[str, Any]:
    decode = [r for r in er.steps if r.phase != "prefill"]
    prefill = [r for r in er.steps if r.phase == "prefill"]
    completed = sum(r.tokens_out for r in er.steps)
    phases = {p: {"steps": 0, "time_s": 0.0} for p in ("I", "II", "III")}
    for r in decode:
        phases[r.phase]["steps"] += 1
        phases[r.phase]["time_s"] += r.time_s
    oom = er.oom is not None
    total = er.total_time_s
    return {
        "schema_version": SCHEMA_VERSION,
        "backend": backend,
        "scenario": scenario_summary(sc),
        "policy": sc.policy.name,
        "oom": oom,
        "oom_reason": er.oom.reason if er.oom else None,
        "oom_pool": er.oom.pool if er.oom else None,
        "tokens_generated": completed,
        "throughput_tokens_per_s": (completed / total) if (total > 0 and not oom) else 0.0,
        "total_time_s": total,
        "prefill_time_s": sum(r.time_s for r in prefill),
        "decode_time_s": sum(r.time_s for r in decode),
        "phases": phases,
        "peak_gpu_bytes": int(er.peak_gpu_bytes),
        "peak_cpu_bytes": int(er.peak_cpu_bytes),
        "h2d_bytes": int(sum(r.h2d_bytes for r in er.steps)),
        "d2h_bytes": int(sum(r.d2h_bytes for r in er.steps)),
        "recomputed_tokens": int(sum(r.recomputed_tokens for r in er.steps)),
        "policy_details": er.policy_summary,
        "sim_events": er.sim_events,
        "trace_truncated_at_step": er.trace_truncated_at_step,
        "sim_wall_s": er.sim_wall_s,
    }


def steps_csv(er: EngineResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(STEP_FIELDS)
    for r in er.steps:
        if r.phase == "prefill":
            continue
        w.writerow(
            [
                r.step,
                r.phase,
                f"{r.start_s:.9g}",
                f"{r.time_s:.9g}",
                r.context_len,
                r.attended_tokens,
                int(r.h2d_bytes),
                int(r.d2h_bytes),
                r.recomputed_tokens,
                f"{r.recompute_ratio:.4g}",
                int(r.gpu_bytes),
                int(r.cpu_bytes),
            ]
        )
    return buf.getvalue()


def chrome_trace(er: EngineResult, title: str) -> str:
    """Chrome trace-event JSON: one lane (thread) per resource; opens in Perfetto."""
    tid = {lane: i for i, lane in enumerate(LANES)}
    ev: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": 0, "args": {"name": title}}]
    ev += [{"name": "thread_name", "ph": "M", "pid": 0, "tid": i, "args": {"name": lane}} for lane, i in tid.items()]
    ev += [
        {"name": "thread_sort_index", "ph": "M", "pid": 0, "tid": i, "args": {"sort_index": i}} for i in tid.values()
    ]
    for lane, name, start, dur, args in er.events:
        ev.append(
            {"name": name, "ph": "X", "pid": 0, "tid": tid[lane], "ts": start * 1e6, "dur": dur * 1e6, "args": args}
        )
    # one span per step on its own lane, so the whole run is visible even when layer events were cut
    steps_tid = len(LANES)
    ev.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": steps_tid, "args": {"name": "steps"}})
    for r in er.steps:
        ev.append(
            {
                "name": "prefill" if r.phase == "prefill" else f"step {r.step} ({r.phase})",
                "ph": "X",
                "pid": 0,
                "tid": steps_tid,
                "ts": r.start_s * 1e6,
                "dur": r.time_s * 1e6,
                "args": {"phase": r.phase, "context_len": r.context_len},
            }
        )
    return json.dumps({"traceEvents": ev, "displayTimeUnit": "ms"})


def write_outputs(out: Path, result: dict[str, Any], er: EngineResult, plots: dict[str, bytes]) -> list[Path]:
    """Every file is rendered first, then each is written atomically."""
    files = {
        "result.json": json.dumps(result, indent=2, sort_keys=False).encode(),
        "steps.csv": steps_csv(er).encode(),
        "trace.json": chrome_trace(er, result["scenario"]["name"]).encode(),
        **plots,
    }
    return write_folder(out, files)


def dump_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2))
