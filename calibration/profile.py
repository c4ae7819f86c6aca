"""Turn measurement rows into a hardware profile (``source: measured``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from alisa.sim.costs import CostModel
from alisa.sim.hardware import HardwareProfile

from .fit import fit_latency_bandwidth, rel_errors, table_points
from .host_issue import host_section
from .layer_gpu import decode_layer_section, prefill_importance_section, prefill_layer_section, recompute_layer_section
from .selection_gpu import selection_section
from .step_probe import step_probe_section
from .zero_copy import zero_copy_section

# DMA copies from and to pinned memory, whose rate only grows with size (``table_points``);
# not pageable copies, whose CPU-side staging copy may slow once its source leaves the cache
PCIE_TABLES = frozenset({"h2d_pinned", "d2h_pinned", "h2d_d2h_concurrent", "h2d_fetch"})


def _by_op(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r["op"]].append(r)
    return out


def _xy(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r["size"] for r in rows], float), np.array([r["seconds"] for r in rows], float)


def build_profile(rows: list[dict], name: str, device: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    ops = _by_op(rows)
    fits: dict[str, dict[str, Any]] = {}
    tables: dict[str, dict[str, Any]] = {}

    def add_table(key: str, op_rows: list[dict], err: float | None) -> None:
        x, t = _xy(op_rows)
        size, sec = table_points(x, t, rate_monotone=key in PCIE_TABLES)
        if len(size) >= 2:
            tables[key] = {
                "size": size,
                "seconds": sec,
                **({"fit_rel_error": round(err, 4)} if err is not None else {}),
            }

    def fit_op(key: str) -> Any:
        """latency + bytes / bandwidth over one op's rows, into ``fits`` and a table."""
        f = fit_latency_bandwidth(*_xy(ops[key]))
        fits[key] = {
            "latency_us": f.latency_s * 1e6,
            "gbps": f.rate_per_s / 1e9,
            "mean_rel_error": f.mean_rel_error,
            "max_rel_error": f.max_rel_error,
        }
        add_table(key, ops[key], f.mean_rel_error)
        return f

    # PCIe: latency + bytes / bandwidth per direction and memory kind
    rates: dict[str, float] = {}
    lats: list[float] = []
    for op in ("h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable"):
        if op in ops:
            f = fit_op(op)
            rates[op] = f.rate_per_s
            if op.endswith("pinned"):
                lats.append(f.latency_s)
    if "h2d_d2h_concurrent" in ops and "h2d_pinned" in ops and "d2h_pinned" in ops:
        big = max(r["size"] for r in ops["h2d_d2h_concurrent"])
        both = next(r["seconds"] for r in ops["h2d_d2h_concurrent"] if r["size"] == big)
        one = max(next(r["seconds"] for r in ops[o] if r["size"] == big) for o in ("h2d_pinned", "d2h_pinned"))
        fits["duplex"] = {
            "bytes_each_way": big,
            "both_s": both,
            "slower_alone_s": one,
            "slowdown_when_concurrent": both / one,
        }
        add_table("h2d_d2h_concurrent", ops["h2d_d2h_concurrent"], None)

    # CPU gather, rows of the largest row size (a 7B-class token's KV in one layer is
    # 16 KiB; the cost model's table is by bytes alone, so one row size defines it). The
    # fetch pipeline's gathers (beside its H2D copies, as the real backend runs them)
    # where measured; else gathers alone, per size the fastest thread count.
    gather_gbps = None
    gather_op = "cpu_gather_pipelined" if "cpu_gather_pipelined" in ops else "cpu_gather"
    if gather_op in ops:
        rb = max(r.get("row_bytes", 0) for r in ops[gather_op])
        g = [r for r in ops[gather_op] if r.get("row_bytes", 0) == rb]
        best: dict[float, dict] = {}
        for r in g:
            if r["size"] not in best or r["seconds"] < best[r["size"]]["seconds"]:
                best[r["size"]] = r
        sel = [best[k] for k in sorted(best)]
        x, t = _xy(sel)
        f = fit_latency_bandwidth(x, t)
        gather_gbps = f.rate_per_s / 1e9
        fits["cpu_gather"] = {
            "measured_as": gather_op,
            "threads_by_size": {int(r["size"]): r.get("threads") for r in sel},
            "row_bytes": rb,
            "latency_us": f.latency_s * 1e6,
            "gbps": gather_gbps,
            "mean_rel_error": f.mean_rel_error,
            "max_rel_error": f.max_rel_error,
        }
        add_table("cpu_gather", sel, f.mean_rel_error)
    if "cpu_gather" in ops and gather_op != "cpu_gather":
        f = fit_latency_bandwidth(*_xy(ops["cpu_gather"]))
        fits["cpu_gather_alone"] = {"gbps": f.rate_per_s / 1e9, "mean_rel_error": f.mean_rel_error}
    if "h2d_fetch" in ops:
        fit_op("h2d_fetch")

    hbm_gbps = ops["hbm_copy"][0]["size"] / ops["hbm_copy"][0]["seconds"] / 1e9
    peak_flops = max(
        (r["flops"] / r["seconds"] for k, v in ops.items() if k.startswith("gemm:") for r in v), default=None
    )
    launch_us = ops["launch"][0]["seconds"] * 1e6 if "launch" in ops else 5.0

    if "attention_decode" in ops:
        fit_op("attention_decode")
    if "attention_decode_contiguous" in ops:
        fit_op("attention_decode_contiguous")
    int8_overhead = 0.15
    if "attention_decode_int8" in ops and "attention_decode" in ops:
        # the fp16 fit extrapolates below its grid, where INT8's halved bytes fall
        fp16 = fit_latency_bandwidth(*_xy(ops["attention_decode"]))
        ratios = [r["seconds"] / float(fp16(r["size"])) for r in ops["attention_decode_int8"]]
        int8_overhead = max(0.0, float(np.median(ratios)) - 1.0)
        fits["attention_decode_int8"] = {"overhead_vs_fp16_at_equal_bytes": int8_overhead}
    if "quantize_int8" in ops:
        x, t = _xy(ops["quantize_int8"])
        f = fit_latency_bandwidth(x, t)
        fits["quantize_int8"] = {
            "latency_us": f.latency_s * 1e6,
            "gbps": f.rate_per_s / 1e9,
            "mean_rel_error": f.mean_rel_error,
        }
        add_table("quantize_int8", ops["quantize_int8"], f.mean_rel_error)
    attn_eff = 0.5
    if "attention_prefill" in ops and peak_flops:
        attn_eff = min(1.0, max(r["size"] / r["seconds"] for r in ops["attention_prefill"]) / peak_flops)

    ratio = [
        rates[f"{d}_pageable"] / rates[f"{d}_pinned"]
        for d in ("h2d", "d2h")
        if f"{d}_pageable" in rates and f"{d}_pinned" in rates
    ]
    profile: dict[str, Any] = {
        "name": name,
        "source": "measured",
        "provenance": (
            f"alisa calibrate{' --quick' if meta.get('quick') else ''} on {device['name']} "
            f"({meta['date']}); rates are measured, so efficiencies are 1.0"
        ),
        "gpu_name": device["name"],
        "gpu_memory_gb": round(device["memory_bytes"] / 1e9, 3),
        "hbm_gbps": round(hbm_gbps, 1),
        "fp16_tflops": round(peak_flops / 1e12, 1) if peak_flops else 100.0,
        "pcie_h2d_gbps": round(rates.get("h2d_pinned", 10e9) / 1e9, 3),
        "pcie_d2h_gbps": round(rates.get("d2h_pinned", 10e9) / 1e9, 3),
        "pcie_latency_us": round(float(np.mean(lats)) * 1e6, 2) if lats else 10.0,
        "pcie_pageable_factor": round(min(1.0, float(np.mean(ratio))), 3) if ratio else 0.4,
        "cpu_memory_gb": round(device["host_memory_bytes"] / 1e9, 1),
        "cpu_gather_gbps": round(gather_gbps, 3) if gather_gbps else 10.0,
        "kernel_launch_us": round(launch_us, 2),
        "gemm_efficiency": 1.0,
        "hbm_efficiency": 1.0,
        "pcie_efficiency": 1.0,
        "attention_efficiency": round(attn_eff, 3),
        "int8_attention_overhead": round(int8_overhead, 3),
        "tables": tables,
        "meta": {**meta, "device": device, "fits": fits},
    }
    host = host_section(rows)
    if host is not None:
        profile["host"] = host
    selection = selection_section(rows)
    if selection is not None:
        profile["selection"] = selection
    zero_copy = zero_copy_section(rows)
    if zero_copy is not None:
        profile["zero_copy"] = zero_copy
    # GEMM tables, with the error of the analytic roofline at the measured peaks
    analytic = CostModel(HardwareProfile(**{**profile, "tables": {}}))
    for key in sorted(k for k in ops if k.startswith("gemm:")):
        g = ops[key]
        pred = np.array([analytic.gemm_s(int(r["m"]), int(r["n"]), int(r["k"])) for r in g])
        mean_err, max_err = rel_errors(pred, np.array([r["seconds"] for r in g]))
        fits[key] = {"roofline_mean_rel_error": mean_err, "roofline_max_rel_error": max_err}
        add_table(key, g, mean_err)
    decode = decode_layer_section(rows, profile)
    if decode:
        profile["decode_layer_us"] = decode
    prefill = prefill_layer_section(rows, profile)
    if prefill:
        profile["prefill_layer_gpu_us"] = prefill
    importance = prefill_importance_section(rows)
    if importance:
        profile["prefill_importance_ps"] = importance
    recompute = recompute_layer_section(rows, profile)
    if recompute:
        profile["recompute_layer_us"] = recompute
    # the executor's own steps, where probed, replace the stand-ins' spill-layer, recompute
    # and slowdown terms (calibration/step_probe.py says why)
    step = step_probe_section(rows)
    if step is not None:
        fits["step_probe"] = {
            "samples": step["samples"],
            "stand_in": {
                "decode_layer_us": {k: profile.get("decode_layer_us", {}).get(k) for k in step["decode_layer_us"]},
                "recompute_layer_us": {
                    k: profile.get("recompute_layer_us", {}).get(k) for k in step["recompute_layer_us"]
                },
                # the stand-in's slowdowns where its rows exist (profiles before the step probe)
                "zero_copy": {
                    k: (zero_copy or {}).get(k) if "zero_copy_slowdown" in ops else None
                    for k in ("compute_slowdown", "gather_slowdown")
                },
            },
        }
        profile.setdefault("decode_layer_us", {}).update(step["decode_layer_us"])
        profile.setdefault("recompute_layer_us", {}).update(step["recompute_layer_us"])
        if zero_copy is not None:
            for k in ("compute_slowdown", "gather_slowdown"):
                if step[k] is not None:
                    zero_copy[k] = step[k]
    HardwareProfile(**profile)  # fail here, not in a user's run, if anything is off
    return profile
