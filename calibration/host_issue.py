"""Host time to issue the real backend's work, measured by running it.

Each probe is a tiny model (hidden 512, so the GPU finishes every kernel long before the
host issues the next) run by ``alisa.runtime``'s executor at two depths. The host time of
a decode step, from a clock around the executor's step, is then per-step + depth x
per-layer; the two depths separate them, and differences between probes separate the
parts (``HostIssue``'s fields): dense layers, SWA's importance update, a spilling run's
write-through and landing, recompute, a FlexGen-like host prefix.
"""

from __future__ import annotations

import time
from typing import Any

DEPTHS = (2, 8)


def _scenario(layers: int, policy: dict[str, Any], hardware: dict[str, Any], gen: int):  # type: ignore[no-untyped-def]
    from alisa.sim.scenario import build_scenario

    model = dict(name=f"probe-{layers}l", family="llama", num_layers=layers, hidden_size=512, num_heads=4,
                 num_kv_heads=4, head_dim=128, ffn_dim=1024, vocab_size=1024, activation="silu", norm="rmsnorm",
                 max_positions=4096)
    return build_scenario({"name": "host-probe", "model": model, "hardware": hardware,
                           "workload": {"batch_size": 4, "prompt_len": 96, "gen_len": gen},
                           "policy": policy, "seed": 0}, "<calibration host probe>")


def time_methods(obj: Any, names: tuple[str, ...]) -> dict[str, list[float]]:
    """Wrap obj's methods so each call's host seconds are appended to the returned lists."""
    spent: dict[str, list[float]] = {n: [] for n in names}
    for name in names:
        fn = getattr(obj, name)

        def wrap(*a, _fn=fn, _out=spent[name], **kw):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                _out.append(time.perf_counter() - t0)
        setattr(obj, name, wrap)
    return spent


def _host_per_step(sc) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(median host seconds per decode step, host seconds of the prefill) of one real run."""
    from alisa.runtime.executor import RealExecutor
    from alisa.runtime.run import release_gpu

    ex = RealExecutor(sc)
    spent = time_methods(ex, ("_decode", "_prefill"))
    ex.run()
    del ex
    release_gpu()
    dec = sorted(spent["_decode"][2:])       # the first two are the executor's rehearsal
    return dec[len(dec) // 2], min(spent["_prefill"])


PROBES: dict[str, dict[str, Any]] = {
    "dense": {"name": "dense-gpu"},
    "swa": {"name": "alisa", "kv_sparsity": 0.5, "gpu_kv_budget_tokens": 4096},
    "spill": {"name": "alisa", "kv_sparsity": 0.5, "gpu_kv_budget_tokens": 80, "recompute": False,
              "selection_churn": 0.5},
    "recompute": {"name": "alisa", "kv_sparsity": 0.5, "gpu_kv_budget_tokens": 80, "recompute": True,
                  "recompute_ratio": 1.0, "selection_churn": 0.5},
    "prefix": {"name": "flexgen", "weights_gpu_percent": 100, "cache_gpu_percent": 50, "cpu_cache_compute": False},
}


def measure_host_issue(hardware: dict[str, Any], gen: int = 40) -> list[dict]:
    """Raw rows: host seconds per decode step (median) and of the prefill, per probe and depth."""
    rows: list[dict] = []
    for probe, policy in PROBES.items():
        for L in DEPTHS:
            step_s, prefill_s = _host_per_step(_scenario(L, policy, hardware, gen))
            rows.append({"op": f"host_issue:{probe}", "size": float(L), "seconds": step_s, "layers": L,
                         "prefill_seconds": prefill_s})
    return rows


def host_section(rows: list[dict]) -> dict[str, float] | None:
    """The profile's ``host`` section (microseconds) from ``measure_host_issue``'s rows."""
    by: dict[tuple[str, int], dict] = {(r["op"].split(":", 1)[1], int(r["layers"])): r
                                       for r in rows if r["op"].startswith("host_issue:")}
    a, b = DEPTHS
    if any((p, L) not in by for p in PROBES for L in DEPTHS):
        return None
    fit: dict[str, tuple[float, float]] = {}     # probe -> (per step, per layer) seconds
    for p in PROBES:
        per_layer = (by[p, b]["seconds"] - by[p, a]["seconds"]) / (b - a)
        fit[p] = (by[p, a]["seconds"] - a * per_layer, per_layer)
    us = lambda v: round(max(0.0, v) * 1e6, 2)  # noqa: E731
    pre = (by["dense", b]["prefill_seconds"] - by["dense", a]["prefill_seconds"]) / (b - a)
    return {
        "prefill_layer_us": us(pre),
        "layer_us": us(fit["dense"][1]),
        "importance_us": us(fit["swa"][1] - fit["dense"][1]),
        "spill_layer_us": us(fit["spill"][1] - fit["swa"][1]),
        "recompute_us": us(fit["recompute"][1] - fit["spill"][1]),
        "prefix_us": us(fit["prefix"][1] - fit["dense"][1]),
        "step_us": us(fit["dense"][0]),
        "round_trip_us": us(fit["spill"][0] - fit["swa"][0]),
    }
