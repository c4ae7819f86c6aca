"""`alisa calibrate`: measure, fit, and write a hardware profile."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from alisa.sim.atomic import write_text
from alisa.sim.catalog import get_model
from alisa.sim.errors import InputError
from alisa.sim.models import kv_recompute_gemm_shape, layer_gemm_shapes, lm_head_gemm_shape

DEFAULT_MODELS = ("opt-6.7b", "llama-7b", "opt-13b", "llama-3-8b")
QUICK_MODELS = ("opt-6.7b", "llama-7b")


def require_gpu() -> Any:
    try:
        import torch
    except ImportError:
        raise InputError("calibrate needs PyTorch with CUDA; torch is not installed") from None
    if not torch.cuda.is_available():
        raise InputError(
            "no CUDA GPU is visible (torch.cuda.is_available() is False); "
            "calibrate measures the local GPU: run it on a machine with one",
            field="device",
        )
    return torch


def _host_memory_bytes() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def gemm_shapes(models: tuple[str, ...]) -> list[tuple[int, int]]:
    shapes: set[tuple[int, int]] = set()
    for name in models:
        m = get_model(name)
        shapes |= {(n, k) for _, n, k in layer_gemm_shapes(m)}
        shapes.add(kv_recompute_gemm_shape(m))
        shapes.add(lm_head_gemm_shape(m))
    return sorted(shapes)


def calibrate(
    quick: bool,
    name: str,
    models: tuple[str, ...] | None,
    progress: Callable[[str], None] | None = None,
    host_processes: int | None = None,
) -> tuple[dict[str, Any], list[dict]]:
    torch = require_gpu()
    import triton

    from . import measure
    from .host_issue import HOST_PROCESSES, measure_host_issue
    from .layer_gpu import measure_decode_layers, measure_prefill_layers, measure_recompute
    from .profile import build_profile
    from .selection_gpu import measure_selection
    from .step_probe import measure_steps
    from .zero_copy import measure_zero_copy

    grid = measure.quick_grid() if quick else measure.full_grid(os.cpu_count() or 1)
    models = models or (QUICK_MODELS if quick else DEFAULT_MODELS)
    t0 = time.time()
    rows: list[dict] = []
    stages: list[tuple[str, Callable[[], list[dict]]]] = [
        ("launch latency", lambda: [measure.launch_latency(grid.repeats)]),
        ("HBM copy", lambda: [measure.hbm_copy(grid.repeats)]),
        ("PCIe transfers", lambda: measure.transfers(grid)),
        ("CPU gather", lambda: measure.cpu_gather(grid)),
        ("fetch pipeline", lambda: measure.fetch_pipeline(grid)),
        ("GEMMs", lambda: measure.gemms(gemm_shapes(models), grid)),
        ("attention kernels", lambda: measure.attention(grid)),
        ("selection graph", measure_selection),
    ]
    stage_s: dict[str, float] = {}
    for label, fn in stages:
        if progress:
            progress(label)
        s = time.time()
        rows += fn()
        stage_s[label] = round(time.time() - s, 2)
    props = torch.cuda.get_device_properties(0)
    device = {
        "name": props.name,
        "memory_bytes": float(props.total_memory),
        "sm_count": props.multi_processor_count,
        "host_memory_bytes": _host_memory_bytes(),
        "host_cpu": platform.processor() or platform.machine(),
        "host_cores": os.cpu_count(),
    }
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "driver": _driver(),
        "cuda": str(torch.version.cuda),
        "torch": str(torch.__version__),
        "triton": triton.__version__,
        "python": platform.python_version(),
        "models": list(models),
        "stage_seconds": stage_s,
        "wall_s": round(time.time() - t0, 1),
        "attention_kernel": "alisa.kernels.swa_triton.sparse_decode_attention (Triton)",
    }
    # the host probes run scenarios, which need a hardware profile: this one, so far
    if progress:
        progress("host issue (real backend on tiny models)")
    s = time.time()
    processes = host_processes or (1 if quick else HOST_PROCESSES)
    meta["host_processes"] = processes
    rows += measure_host_issue(build_profile(rows, name, device, meta), processes=processes)
    stage_s["host issue"] = round(time.time() - s, 2)
    if progress:
        progress("decode layers (real backend graphs)")
    s = time.time()
    rows += measure_decode_layers(build_profile(rows, name, device, meta), models)
    stage_s["decode layers"] = round(time.time() - s, 2)
    if progress:
        progress("prefill layers (real backend)")
    s = time.time()
    rows += measure_prefill_layers(build_profile(rows, name, device, meta), models)
    stage_s["prefill layers"] = round(time.time() - s, 2)
    if progress:
        progress("recompute layers (real backend graphs)")
    s = time.time()
    rows += measure_recompute(build_profile(rows, name, device, meta), models)
    stage_s["recompute layers"] = round(time.time() - s, 2)
    if progress:
        progress("device gather (zero-copy kernel, graph replays)")
    s = time.time()
    rows += measure_zero_copy(build_profile(rows, name, device, meta), models)
    stage_s["device gather"] = round(time.time() - s, 2)
    if progress:
        progress("spilling steps (real backend, device gather on and off)")
    s = time.time()
    rows += measure_steps(build_profile(rows, name, device, meta), models)
    stage_s["spilling steps"] = round(time.time() - s, 2)
    meta["wall_s"] = round(time.time() - t0, 1)
    return build_profile(rows, name, device, meta), rows


def write_profile(profile: dict[str, Any], rows: list[dict], out: Path) -> None:
    """The profile YAML and, beside it, the raw measurements (both written whole)."""
    import json

    header = (
        "# Written by `alisa calibrate`: measured on the device named below; do not edit by hand.\n"
        "# Raw measurements: the .measurements.json file beside this one.\n"
    )
    plain = json.loads(json.dumps(profile, default=str))  # torch's version strings etc. become plain types
    write_text(out, header + yaml.safe_dump(plain, sort_keys=False, width=120))
    write_text(out.with_suffix(".measurements.json"), json.dumps(rows, indent=0))


def refit(profile_path: Path) -> tuple[dict[str, Any], list[dict]]:
    """Rebuild a measured profile from the raw measurements saved beside it (no GPU)."""
    import json

    from alisa.sim.hardware import read_yaml

    from .profile import build_profile

    raw = profile_path.with_suffix(".measurements.json")
    old = read_yaml(profile_path)
    if not isinstance(old, dict) or old.get("source") != "measured":
        raise InputError("not a measured profile (source: measured)", file=str(profile_path), field="source")
    if not raw.is_file():
        raise InputError("no raw measurements beside the profile", file=str(raw))
    rows = json.loads(raw.read_text())
    meta = dict(old.get("meta") or {})
    device = meta.pop("device")
    meta.pop("fits", None)
    meta["refit"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return build_profile(rows, old["name"], device, meta), rows
