"""Host time to issue the real backend's work, measured by running it.

Each probe is a narrow model (hidden 512, so the host rather than the GPU sets the pace)
run by ``alisa.runtime``'s executor on the validation matrix's workload shape (prompt
512; ALISA at s = 0.8 with a 320-token cache and churn 0.6) at two depths and two batch
sizes. The host time of a decode step, from a clock around the executor's step, is
per-step + depth x per-layer: the depths separate those, the batch sizes give each part
as fixed + per sequence, and differences between probes separate the parts
(``HostIssue``'s fields): dense layers, SWA's importance update, a spilling run's
write-through, waiting and landing, recompute, a FlexGen-like host prefix; the fetch's
copy issue per further part comes from the recompute probe's layers, which fetch both
KV rows and inputs x (recompute ratio 0.5), against the spill probe's. The depths are
8 and 32 because the per-layer cost of a spilling run grows with depth at first (the
host worker's gathers and the main thread share the interpreter lock); 32 is the depth
of the models the matrix runs. A spilling probe's host time also holds the wait for its
selection graph (GPU work over all layers, sequences and positions); that is timed apart
(``selection_gpu``), replayed on the probe's own graph, and taken off.
"""

from __future__ import annotations

import time
from typing import Any

DEPTHS = (8, 32)
BATCHES = (8, 32)
PROMPT = 512


def _scenario(layers: int, policy: dict[str, Any], hardware: dict[str, Any], gen: int,  # type: ignore[no-untyped-def]
              batch: int = 8):
    from alisa.sim.scenario import build_scenario

    model = dict(name=f"probe-{layers}l", family="llama", num_layers=layers, hidden_size=512, num_heads=4,
                 num_kv_heads=4, head_dim=128, ffn_dim=1024, vocab_size=1024, activation="silu", norm="rmsnorm",
                 max_positions=4096)
    return build_scenario({"name": "host-probe", "model": model, "hardware": hardware,
                           "workload": {"batch_size": batch, "prompt_len": PROMPT, "gen_len": gen},
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


def _host_per_step(sc) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One real run's medians per decode step: host seconds (``seconds``), of which in the
    fetch (``wait_seconds``: waiting for a worker, or running the fetch jobs inline), and
    the fetch job's own seconds per fetching layer beyond its gathers and waits
    (``worker_layer_seconds``: index lists, copy issue); the prefill's host seconds; and a
    spilling run's selection graph's seconds, issue to host part (``selection_seconds``)."""
    from alisa.runtime.executor import RealExecutor
    from alisa.runtime.run import release_gpu

    ex = RealExecutor(sc)
    spent = time_methods(ex, ("_decode", "_prefill"))
    waits: list[float] = []
    worker: list[float] = []
    copies: dict[int, list[float]] = {1: [], 2: []}    # copy issue seconds by the layer's parts
    if ex.fetcher is not None:
        inner, inner_run = ex.fetcher.wait, ex.fetcher.run_to
        per_step: list[float] = []

        def run_to(layer: int) -> None:
            t0 = time.perf_counter()
            inner_run(layer)
            per_step.append(time.perf_counter() - t0)

        def wait(layer: int):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            f = inner(layer)
            per_step.append(time.perf_counter() - t0)
            if f.host_marks is not None:
                m = f.host_marks
                worker.append((m[1] - m[0]) + (m[4] - m[3]))
                parts = int(f.widths[0] > 0) + int(f.widths[1] > 0)
                if parts in copies:
                    copies[parts].append(m[4] - m[3])
            if layer == sc.model.num_layers - 1:
                waits.append(sum(per_step))
                per_step.clear()
            return f
        ex.fetcher.wait, ex.fetcher.run_to = wait, run_to
    ex.run()
    # a spilling run's selection graph: GPU time the host waited for at every step, which
    # the simulator times from the profile's ``selection`` (shape-dependent), so it is
    # taken off these probes' host time
    selector = ex.slots.selector if ex.slots is not None else None
    selection_s = 0.0
    if selector is not None and selector.graph is not None:
        from .selection_gpu import replay_seconds
        selection_s = replay_seconds(selector)
    del ex, selector
    release_gpu()

    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        return xs[len(xs) // 2] if xs else 0.0
    L = sc.model.num_layers
    out = {"seconds": median(spent["_decode"][2:]),        # the first two are the executor's rehearsal
           "wait_seconds": median(waits[2:]), "worker_layer_seconds": median(worker[2 * L:]),
           "prefill_seconds": min(spent["_prefill"]), "selection_seconds": selection_s}
    for parts, xs in copies.items():
        if xs:
            out[f"copy_issue_{parts}part_seconds"] = median(xs)
    return out


PROBES: dict[str, dict[str, Any]] = {
    "dense": {"name": "dense-gpu"},
    "swa": {"name": "alisa", "kv_sparsity": 0.8, "gpu_kv_budget_tokens": 4096},
    "spill": {"name": "alisa", "kv_sparsity": 0.8, "gpu_kv_budget_tokens": 320, "recompute": False,
              "selection_churn": 0.6},
    # half the misses recomputed: its layers fetch KV rows and inputs x (two parts each)
    "recompute": {"name": "alisa", "kv_sparsity": 0.8, "gpu_kv_budget_tokens": 320, "recompute": True,
                  "recompute_ratio": 0.5, "selection_churn": 0.6},
    "prefix": {"name": "flexgen", "weights_gpu_percent": 100, "cache_gpu_percent": 50, "cpu_cache_compute": False},
}


def measure_host_issue(hardware: dict[str, Any], gen: int = 32) -> list[dict]:
    """Raw rows: host seconds per decode step (median) and of the prefill, per probe, depth
    and batch size."""
    rows: list[dict] = []
    for probe, policy in PROBES.items():
        for B in BATCHES:
            for L in DEPTHS:
                r = _host_per_step(_scenario(L, policy, hardware, gen, B))
                rows.append({"op": f"host_issue:{probe}", "size": float(L), "layers": L, "batch": B, **r})
    return rows


def _section_at(by: dict[tuple[str, int], dict], a: int, b: int) -> dict[str, float]:
    """The host fields (microseconds) at one batch size, from its probes' rows by (probe,
    depth) at depths a < b."""
    fit: dict[str, tuple[float, float]] = {}     # probe -> (per step, per layer) seconds
    for p in PROBES:
        # the main thread's own time: what it spent in the fetch (waiting for a worker, or
        # running the jobs inline) the simulator times as gathers and ``fetch_layer_us``
        # and the selection graph's GPU time the profile's ``selection`` gives
        own = {L: by[p, L]["seconds"] - by[p, L].get("wait_seconds", 0.0) - by[p, L].get("selection_seconds", 0.0)
               for L in (a, b)}
        per_layer = (own[b] - own[a]) / (b - a)
        fit[p] = (own[a] - a * per_layer, per_layer)
    pre = (by["dense", b]["prefill_seconds"] - by["dense", a]["prefill_seconds"]) / (b - a)
    return {
        "prefill_layer_us": pre * 1e6,
        "layer_us": fit["dense"][1] * 1e6,
        "importance_us": (fit["swa"][1] - fit["dense"][1]) * 1e6,
        "spill_layer_us": (fit["spill"][1] - fit["swa"][1]) * 1e6,
        "recompute_us": (fit["recompute"][1] - fit["spill"][1]) * 1e6,
        "prefix_us": (fit["prefix"][1] - fit["dense"][1]) * 1e6,
        "step_us": fit["dense"][0] * 1e6,
        "round_trip_us": (fit["spill"][0] - fit["swa"][0]) * 1e6,
        "fetch_layer_us": by["spill", b].get("worker_layer_seconds", 0.0) * 1e6,
        "fetch_part_us": _part_us(by["spill", b], by["recompute", b]),
    }


def _part_us(one: dict, two: dict) -> float:
    """A fetching layer's further part (its second gather's copy): the copy issue of the
    recompute probe's two-part layers (KV rows and inputs x) less the spill probe's
    one-part layers', timed on the host around the copies alone (the probes' waits for the
    GPU, which a narrow model's pace sets, stay out). Zero where either was not measured."""
    a, b = one.get("copy_issue_1part_seconds"), two.get("copy_issue_2part_seconds")
    return (b - a) * 1e6 if a is not None and b is not None else 0.0


def host_section(rows: list[dict]) -> dict[str, Any] | None:
    """The profile's ``host`` section from ``measure_host_issue``'s rows: each field as
    [fixed, per sequence] microseconds, a line through its values at the two batch sizes
    (rows without a batch, from older calibrations, give plain numbers)."""
    by_batch: dict[int, dict[tuple[str, int], dict]] = {}
    for r in rows:
        if r["op"].startswith("host_issue:"):
            by_batch.setdefault(int(r.get("batch", 0)), {})[(r["op"].split(":", 1)[1], int(r["layers"]))] = r
    at: dict[int, dict[str, float]] = {}
    for B, by in by_batch.items():
        depths = sorted({L for _, L in by})
        if len(depths) < 2 or any((p, L) not in by for p in PROBES for L in (depths[0], depths[-1])):
            continue
        at[B] = _section_at(by, depths[0], depths[-1])
    if not at:
        return None
    if len(at) == 1:
        (only,) = at.values()
        return {k: round(max(0.0, v), 2) for k, v in only.items()}
    b0, b1 = min(at), max(at)
    out: dict[str, Any] = {}
    for k in at[b0]:
        slope = (at[b1][k] - at[b0][k]) / (b1 - b0)
        out[k] = [round(at[b0][k] - b0 * slope, 2), round(slope, 3)]
    return out
