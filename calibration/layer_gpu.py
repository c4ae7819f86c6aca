"""GPU time of a decode layer (and a prefill layer, and a Phase III recompute layer)
beyond its GEMMs and attention, measured by running the real backend's own code.

A decode layer of one token per sequence runs some 30 small kernels besides its GEMMs
(norms, RoPE, activations, residual adds, the new token's cache write, the attention
kernels' fixed cost). Each takes a few microseconds whatever its size, so together they
are a large share of a decode step at small batch, and one pass over the activations
(the analytic term) misses most of it. Here a two-layer copy of each model family at its
real width runs ``alisa.runtime``'s ``DecodeStep`` graphs, pre and post, with an empty
attention list; the GEMMs (from this calibration's tables) and the attention kernels'
floor are taken off, at two batch sizes, giving ``decode_layer_us[family/cache]`` as
[fixed, per sequence] microseconds. The cache layouts differ in what the graphs hold:
``slots`` (dense), ``swa`` (plus the importance update), ``spill`` (SWA whose KV
outgrows the GPU cache: plus the new rows' copies for the write-through and the scatter
that lands fetched rows), ``prefix`` (FlexGen-like: a second attention over the fetched
part and the merge).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

BATCHES = (8, 32)
REPEATS = 30

CACHES: dict[str, dict[str, Any]] = {
    "slots": {"name": "dense-gpu"},
    "swa": {"name": "alisa", "kv_sparsity": 0.8, "gpu_kv_budget_tokens": 4096},
    # a cache smaller than the run: the write-through copies and the landing scatter too
    "spill": {"name": "alisa", "kv_sparsity": 0.8, "gpu_kv_budget_tokens": 32},
    "prefix": {
        "name": "flexgen",
        "weights_gpu_percent": 100,
        "cache_gpu_percent": 50,
        "cpu_cache_compute": False,
        "runtime": "alisa",
    },
}

DENSE_CACHES = ("slots", "prefix")  # layouts whose decode attention reads the whole cache


def _family_models(models: tuple[str, ...]) -> dict[str, str]:
    """The first model of each family in the calibration's model list."""
    from alisa.sim.catalog import get_model

    out: dict[str, str] = {}
    for name in models:
        out.setdefault(get_model(name).family, name)
    return out


def _time_layers(sc, repeats: int, beside: Callable[[float], None] | None = None) -> float:
    """Seconds of GPU time per decode layer: the step's graphs replayed back to back.
    With ``beside``: a second pass, with ``beside(seconds)`` first queueing that much
    other work on another stream (the device gather), and returns that pass's time."""
    import torch

    from alisa.runtime.executor import RealExecutor
    from alisa.runtime.run import release_gpu

    ex = RealExecutor(sc)
    with torch.no_grad():
        ex._warm_up()
        st, L = ex.step_fn, sc.model.num_layers
        for _ in range(3):
            for l in range(L):
                st.pre(l)
                st.post(l)

        def timed() -> float:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            # at most two layers queued ahead of the GPU, as the executor issues them
            # (``RealOptions.run_ahead_layers``): a deeper queue runs slower
            ring = [torch.cuda.Event(), torch.cuda.Event()]
            a.record()
            for i in range(repeats * L):
                st.pre(i % L)
                st.post(i % L)
                if i >= 2:
                    ring[i % 2].synchronize()
                ring[i % 2].record()
            b.record()
            b.synchronize()
            return a.elapsed_time(b) / 1e3 / (repeats * L)

        t = timed()
        if beside is not None:
            torch.cuda.synchronize()
            beside(1.5 * t * repeats * L)
            t = timed()
            torch.cuda.synchronize()
    del ex
    release_gpu()
    return t


def _layer_probes(
    hardware: dict[str, Any], models: tuple[str, ...], caches: dict[str, dict[str, Any]], prompt: int, probe: str
) -> Iterator[tuple[str, str, str, int, Any]]:
    """(family, model name, cache layout, batch, scenario) for each probe of a two-layer
    copy of each family's first model, per cache layout and batch size."""
    from alisa.sim.catalog import model_config
    from alisa.sim.scenario import build_scenario

    for family, name in _family_models(models).items():
        model = {**model_config(name), "name": f"{name}-2l", "num_layers": 2}
        for cache, policy in caches.items():
            for B in BATCHES:
                yield (
                    family,
                    name,
                    cache,
                    B,
                    build_scenario(
                        {
                            "name": probe,
                            "model": model,
                            "hardware": hardware,
                            "workload": {"batch_size": B, "prompt_len": prompt, "gen_len": 8},
                            "policy": policy,
                            "seed": 0,
                        },
                        f"<calibration {probe}>",
                    ),
                )


def _line_through(pts: dict[int, float], digits: int) -> list[float]:
    """[fixed, slope] of the line through the points at the smallest and largest x."""
    (x0, y0), (x1, y1) = min(pts.items()), max(pts.items())
    slope = (y1 - y0) / (x1 - x0)
    return [round(y0 - x0 * slope, 2), round(slope, digits)]


def measure_decode_layers(hardware: dict[str, Any], models: tuple[str, ...]) -> list[dict]:
    """Raw rows: GPU seconds per decode layer, per family, cache layout and batch."""
    return [
        {"op": f"decode_layer:{family}/{cache}", "size": float(B), "model": name, "seconds": _time_layers(sc, REPEATS)}
        for family, name, cache, B, sc in _layer_probes(hardware, models, CACHES, 64, "decode-layer-probe")
    ]


def decode_layer_section(rows: list[dict], profile: dict[str, Any]) -> dict[str, list[float]]:
    """The profile's ``decode_layer_us``: per family/cache, [fixed, per sequence] microseconds
    of a decode layer's GPU time beyond its GEMMs and the attention kernels' floor."""
    from alisa.sim.catalog import get_model
    from alisa.sim.costs import CostModel
    from alisa.sim.hardware import HardwareProfile
    from alisa.sim.models import kv_bytes_per_token_per_layer, layer_gemm_shapes

    cost = CostModel(HardwareProfile(**{**profile, "decode_layer_us": {}}))
    by: dict[str, dict[int, tuple[float, str]]] = {}
    for r in rows:
        if r["op"].startswith("decode_layer:"):
            by.setdefault(r["op"].split(":", 1)[1], {})[int(r["size"])] = (r["seconds"], r["model"])
    out: dict[str, list[float]] = {}
    for key, pts in by.items():
        if len(pts) < 2:
            continue
        resid = {}
        for B, (t, name) in pts.items():
            m = get_model(name)
            gemms = sum(cost.gemm_s(B, n, k, m.dtype_bytes) for _, n, k in layer_gemm_shapes(m))
            # the floor of the kernel the simulator charges this layout (whole caches read in order)
            dense = key.split("/")[1] in DENSE_CACHES
            attn_floor = cost.attention_decode_s(B * kv_bytes_per_token_per_layer(m), contiguous=dense)
            resid[B] = (t - gemms - attn_floor) * 1e6
        out[key] = _line_through(resid, 3)
    return out


# the prefill: the matrix's prompt, at two batch sizes (tokens = batch x prompt); the
# spill layout with the matrix's cache (a step at that context must fit it)
PREFILL_PROMPT = 512
PREFILL_REPEATS = 5
PREFILL_CACHES: dict[str, dict[str, Any]] = {**CACHES, "spill": {**CACHES["spill"], "gpu_kv_budget_tokens": 320}}
# SWA layouts again at a longer importance history: the prompt importance's rows are
# min(history, prompt), and the history (by default the window at the run's longest
# context) grows with the run, so the probe's own history (~52 rows) alone would leave
# that cost folded into the per-token term at one history
PREFILL_LONG_HISTORY = 256


def prompt_importance_rows(sc) -> int:
    """Query rows of a scenario's SWA prefill importance (0 without SWA)."""
    from alisa.sim.models import prompt_importance_rows as rows
    from alisa.sim.policies import make_policy

    history = make_policy(sc).coster.importance_history
    return rows(history, sc.workload.prompt_len) if history else 0


def _time_prefill(sc, repeats: int, device: str | None = None) -> float:
    """Seconds of GPU time per prefill layer as the real backend runs it (its per-layer
    spans: QKV, causal attention, the cache's prompt placement and, spilling, its copies
    down, the rest of the layer), median over ``repeats`` prefills after one untimed."""
    import statistics

    import torch

    from alisa.runtime.device import Timeline
    from alisa.runtime.executor import RealExecutor, RealOptions
    from alisa.runtime.run import release_gpu
    from alisa.sim.plan import StepPlan

    ex = RealExecutor(sc, RealOptions(device=device))  # device "cpu": the tests
    plan = next(iter(ex.policy.plans()))
    assert isinstance(plan, StepPlan) and plan.phase == "prefill"
    ids = ex.prompt()
    per_layer: list[float] = []
    with torch.no_grad():
        ex._warm_up()
        for r in range(repeats + 1):
            ex.tl = Timeline(ex.d)
            ex._reset_run_state()
            ex._prefill(plan, ids)
            ex.d.sync()
            spans = [(a, b) for lane, name, a, b, _ in ex.spans if name.startswith("prefill L")]
            if r:
                per_layer.append(sum(ex.tl.seconds(b) - ex.tl.seconds(a) for a, b in spans) / len(spans))
            if ex.slots is not None:
                ex.slots.reset()
            elif ex.prefix is not None:
                ex.prefix.reset()
    del ex
    release_gpu()
    return statistics.median(per_layer)


def _prefill_probes(hardware: dict[str, Any], models: tuple[str, ...]) -> Iterator[tuple[str, str, str, int, Any]]:
    """The prefill probes: each layout and batch, the SWA layouts at two histories."""
    for family, name, cache, B, sc in _layer_probes(
        hardware, models, PREFILL_CACHES, PREFILL_PROMPT, "prefill-layer-probe"
    ):
        yield family, name, cache, B, sc
        if prompt_importance_rows(sc):
            pol = sc.policy.model_copy(update={"importance_history": PREFILL_LONG_HISTORY})
            yield family, name, cache, B, sc.model_copy(update={"policy": pol})


def measure_prefill_layers(hardware: dict[str, Any], models: tuple[str, ...]) -> list[dict]:
    """Raw rows: GPU seconds per prefill layer, per family, cache layout and batch, at the
    matrix's prompt length; SWA layouts at two histories, with their prompt importance's
    rows (``history``)."""
    return [
        {
            "op": f"prefill_layer:{family}/{cache}",
            "size": float(B * PREFILL_PROMPT),
            "batch": B,
            "prompt": PREFILL_PROMPT,
            "model": name,
            "seconds": _time_prefill(sc, PREFILL_REPEATS),
            **({"history": rows} if (rows := prompt_importance_rows(sc)) else {}),
        }
        for family, name, cache, B, sc in _prefill_probes(hardware, models)
    ]


def _elements(row: dict) -> int:
    """Prompt importance weights of a SWA prefill probe's layer (its rows are recorded)."""
    from alisa.sim.catalog import get_model
    from alisa.sim.models import prompt_importance_elements

    return prompt_importance_elements(
        get_model(row["model"]), int(row["batch"]), int(row["history"]), int(row["prompt"])
    )


def prefill_importance_section(rows: list[dict]) -> dict[str, float]:
    """The profile's ``prefill_importance_ps``: per family/cache, picoseconds per element
    (sequences x query heads x rows x prompt) of the prompt importance, from the prefill
    layer's growth between the two histories at each batch (mean over the batches)."""
    by: dict[str, dict[int, dict[int, dict]]] = {}
    for r in rows:
        if r["op"].startswith("prefill_layer:") and r.get("history"):
            by.setdefault(r["op"].split(":", 1)[1], {}).setdefault(int(r["batch"]), {})[int(r["history"])] = r
    out: dict[str, float] = {}
    for key, batches in by.items():
        slopes = []
        for hs in batches.values():
            if len(hs) < 2:
                continue
            lo, hi = min(hs), max(hs)
            slopes.append((hs[hi]["seconds"] - hs[lo]["seconds"]) / (_elements(hs[hi]) - _elements(hs[lo])))
        if slopes:
            out[key] = round(max(0.0, sum(slopes) / len(slopes)) * 1e12, 4)
    return out


def prefill_layer_section(rows: list[dict], profile: dict[str, Any]) -> dict[str, list[float]]:
    """The profile's ``prefill_layer_gpu_us``: per family/cache, [fixed, per prompt token]
    microseconds of a prefill layer's GPU time beyond its GEMMs and the causal attention
    (tokens = batch x prompt). The analytic one pass over the activations misses most of
    it: in the ninth matrix LLaMA-7B's real prefill layers ran 1.5x the GEMMs and attention
    (RoPE, RMSNorm in fp32, the gated FFN's products), OPT-6.7B's 1.1x."""
    from alisa.sim.catalog import get_model
    from alisa.sim.costs import CostModel
    from alisa.sim.hardware import HardwareProfile
    from alisa.sim.models import layer_gemm_shapes

    cost = CostModel(HardwareProfile(**{**profile, "prefill_layer_gpu_us": {}}))
    ps = prefill_importance_section(rows)
    # per layout and batch the probe at its shortest history; its prompt importance is
    # taken off where two histories measured it (else it stays in this term)
    probes: dict[tuple[str, int], dict] = {}
    for r in rows:
        if r["op"].startswith("prefill_layer:"):
            at = (r["op"].split(":", 1)[1], int(r["batch"]))
            if at not in probes or r.get("history", 0) < probes[at].get("history", 0):
                probes[at] = r
    by: dict[str, dict[int, float]] = {}
    for (key, B), r in probes.items():
        m = get_model(r["model"])
        tokens, P = int(r["size"]), int(r["prompt"])
        gemms = sum(cost.gemm_s(tokens, n, k, m.dtype_bytes) for _, n, k in layer_gemm_shapes(m))
        attn = cost.attention_prefill_s(B, m.num_heads, m.head_dim, P)
        importance = ps.get(key, 0.0) * 1e-12 * _elements(r) if "history" in r else 0.0
        by.setdefault(key, {})[tokens] = (r["seconds"] - gemms - attn - importance) * 1e6
    return {key: _line_through(pts, 5) for key, pts in by.items() if len(pts) >= 2}


# Phase III recompute: (batch, rows per sequence) replayed per family; a cache of 320
# tokens for a 1032-token run spills, and its largest global part (103) bounds the rows
RECOMPUTE_POINTS = ((8, 16), (8, 96), (32, 16), (32, 96))


def _time_recompute(sc, rows: int, repeats: int) -> float:
    """Seconds of GPU time per layer of the real backend's recompute graph at ``rows``
    rows per sequence, replayed back to back over the layers."""
    import torch

    from alisa.runtime.executor import RealExecutor
    from alisa.runtime.run import release_gpu

    ex = RealExecutor(sc)
    with torch.no_grad():
        ex._warm_up()
        c, rc, L = ex.slots, ex.recompute, sc.model.num_layers
        assert rc is not None and c is not None and c.selector is not None
        sel = c.selector
        sel.rec_width.fill_(rows)
        sel.dst_x.copy_((c.b_ar * c.S + c.C)[None, :, None].expand_as(sel.dst_x))  # every row to the trash slot
        sel.pos_x.copy_(torch.arange(sel.pos_x.shape[-1], device=sel.pos_x.device).expand_as(sel.pos_x))
        rc.capture(rows)
        for l in range(L):
            rc.run(l, rows)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(repeats * L):
            rc.run(i % L, rows)
        b.record()
        b.synchronize()
    del ex, rc, c, sel
    release_gpu()
    return a.elapsed_time(b) / 1e3 / (repeats * L)


def measure_recompute(hardware: dict[str, Any], models: tuple[str, ...]) -> list[dict]:
    """Raw rows: GPU seconds per layer of the recompute graph, per family, batch and width."""
    from alisa.sim.catalog import model_config
    from alisa.sim.models import recompute_width_bucket
    from alisa.sim.scenario import build_scenario

    rows: list[dict] = []
    policy = {
        "name": "alisa",
        "kv_sparsity": 0.8,
        "gpu_kv_budget_tokens": 320,
        "recompute": True,
        "recompute_ratio": 1.0,
    }
    for family, name in _family_models(models).items():
        model = {**model_config(name), "name": f"{name}-2l", "num_layers": 2}
        for B, width in RECOMPUTE_POINTS:
            sc = build_scenario(
                {
                    "name": "recompute-probe",
                    "model": model,
                    "hardware": hardware,
                    "workload": {"batch_size": B, "prompt_len": 1024, "gen_len": 8},
                    "policy": policy,
                    "seed": 0,
                },
                "<calibration recompute probe>",
            )
            rows.append(
                {
                    "op": f"recompute_layer:{family}",
                    "size": float(B * recompute_width_bucket(width)),
                    "batch": B,
                    "rows": width,
                    "model": name,
                    "seconds": _time_recompute(sc, width, REPEATS),
                }
            )
    return rows


def recompute_layer_section(rows: list[dict], profile: dict[str, Any]) -> dict[str, list[float]]:
    """The profile's ``recompute_layer_us``: per family, [fixed, per recomputed row]
    microseconds of a recompute layer's GPU time beyond its K/V GEMM (least squares over
    the points, rows = batch x width bucket)."""
    import numpy as np

    from alisa.sim.catalog import get_model
    from alisa.sim.costs import CostModel
    from alisa.sim.hardware import HardwareProfile
    from alisa.sim.models import kv_recompute_gemm_shape

    cost = CostModel(HardwareProfile(**{**profile, "recompute_layer_us": {}}))
    pts: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["op"].startswith("recompute_layer:"):
            m = get_model(r["model"])
            n, k = kv_recompute_gemm_shape(m)
            tokens = int(r["size"])
            pts.setdefault(r["op"].split(":", 1)[1], []).append(
                (float(tokens), (r["seconds"] - cost.gemm_s(tokens, n, k, m.dtype_bytes)) * 1e6)
            )
    out: dict[str, list[float]] = {}
    for fam, p in pts.items():
        if len({x for x, _ in p}) < 2:
            continue
        slope, fixed = np.polyfit([x for x, _ in p], [y for _, y in p], 1)
        out[fam] = [round(float(fixed), 2), round(float(slope), 5)]
    return out
