"""The executor's own spilling decode steps as calibration probes (ALISA, device gather).

The other GPU probes time pieces apart: a decode layer's graphs replayed alone
(``layer_gpu``), the recompute graph alone, the gather kernel alone, and the layers beside
gathers that a probe queues on another stream (the stand-in that measured the slowdowns
until 2026-12-06). On the 2026-12-06 H100 the executor's Phase II layers ran 3-4 % slower
and its Phase III layers 7-11 % slower than those pieces added up, and its gathers beside
the layers ran faster than the stand-in said (docs/validation.md). So here the real
backend runs whole decode steps of a four-layer copy of each family at the real width,
two batch sizes, recompute ratios 0 (Phase II), 0.5 and 1 (Phase III), each twice: once
as it runs (**wet**), once with the device gather's kernels not launched (**dry**,
``RealOptions.gather_dry``: the same plans, the layers alone). Every decode step is
traced; per layer the probe keeps the compute span (less its wait for the gather), the
gather's span and bytes, and what the simulator would say for that layer without the terms
measured here (``predicted_*``, from the profile so far).

``step_probe_section`` turns the rows into those terms, all measured on these probes and
none on a validation run:

* ``decode_layer_us[family/spill]``: the dry Phase II layers' time beyond the model's other
  terms, a line through the two batch sizes (fixed, per sequence);
* ``recompute_layer_us[family]``: the dry Phase III layers' further time beyond that, by
  rows recomputed (least squares over batches and ratios);
* ``zero_copy.compute_slowdown`` / ``gather_slowdown``: per layer, wet against dry
  compute and wet gather against the gather alone (the profile's bytes fit), each over
  the overlap the simulator charges them on, min(compute alone, gather alone); medians.

Batches 8 and 40, prompts 448 (Phase II) and 896 (Phase III) and a 256-token cache are none
of the validation points.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from typing import Any

BATCHES = (8, 40)
LAYERS = 4
PROMPT = 448
# Phase III's probes at a longer prompt: more misses a step, so ratios 0.5 and 1 recompute
# 32 and 64 rows a sequence (at 448 both round up to the same 16-row graph)
PROMPT_RECOMPUTE = 896
BUDGET = 256
STEPS = 24
RATIOS = (0.0, 0.5, 1.0)
CHURN = 0.6  # the validation matrix's: new misses per step, share of the global selection
MIN_OVERLAP_S = 20e-6  # layers that overlap less say nothing about a slowdown

# one sample per (step, layer) in a row's "samples"
FIELDS = (
    "step",
    "layer",
    "compute_s",
    "gather_s",
    "bytes",
    "predicted_compute_s",
    "predicted_gather_s",
    "recompute_rows",
)


def probe_scenario(
    hardware: Any,
    model: dict[str, Any],
    batch: int,
    ratio: float,
    steps: int = STEPS,
    prompt: int = PROMPT,
    budget: int = BUDGET,
) -> Any:
    """ALISA with the device gather on ``model`` (a catalog config, any depth) spilling
    from the first step; Phase III at ``ratio`` of the misses recomputed (0: Phase II)."""
    from alisa.sim.scenario import build_scenario

    policy: dict[str, Any] = {
        "name": "alisa",
        "kv_sparsity": 0.8,
        "local_fraction": 0.5,
        "gpu_kv_budget_tokens": budget,
        "gather": "device",
        "selection_churn": CHURN,
        "recompute": ratio > 0,
    }
    if ratio > 0:
        policy["recompute_ratio"] = ratio
    return build_scenario(
        {
            "name": "step-probe",
            "model": model,
            "hardware": hardware,
            "workload": {"batch_size": batch, "prompt_len": prompt, "gen_len": steps},
            "policy": policy,
            "seed": 0,
        },
        "<calibration step probe>",
    )


def _model_alone(sc: Any) -> Any:
    """The scenario's profile less the terms this probe measures, for its family."""
    hw = sc.hardware
    fam = sc.model.family
    return hw.model_copy(
        update={
            "decode_layer_us": {**hw.decode_layer_us, f"{fam}/spill": (0.0, 0.0)},
            "recompute_layer_us": {**hw.recompute_layer_us, fam: (0.0, 0.0)},
            "zero_copy": hw.zero_copy.model_copy(update={"compute_slowdown": 0.0, "gather_slowdown": 0.0}),
        }
    )


def predicted(sc: Any) -> dict[tuple[int, int], tuple[float, float, int]]:
    """Per (step, layer) of the scenario's decode plans: the simulator's compute and
    gather seconds without the probed terms, and the rows it recomputes (all sequences)."""
    from alisa.sim.plan import OutOfMemory
    from alisa.sim.policies import make_policy

    policy = make_policy(sc)
    coster = policy.coster.with_hardware(_model_alone(sc))
    out: dict[tuple[int, int], tuple[float, float, int]] = {}
    for plan in policy.plans():
        if isinstance(plan, OutOfMemory) or plan.phase == "prefill":
            continue
        for l, lp in enumerate(plan.layers):
            t = coster.layer_times(lp)
            b = lp.seqs or coster.batch
            out[(plan.step, l)] = (t.compute_s, t.h2d_s, b * coster.recompute_rows(lp.recompute_tokens))
    return out


def probe_rows(sc: Any, family: str, model: str, ratio: float, make_opts: Callable[[bool], Any]) -> list[dict]:
    """The scenario run wet and dry by the real backend, every decode step traced: one
    row each, with a sample per (step, layer)."""
    from alisa.runtime.executor import RealExecutor
    from alisa.runtime.run import release_gpu
    from alisa.runtime.validate import layer_parts

    pred = predicted(sc)
    rows = []
    for dry in (False, True):
        run = RealExecutor(sc, make_opts(dry)).run()
        spans = layer_parts(run.er.log.events())
        del run
        release_gpu()
        samples = [
            [k[0], k[1], v["compute"], v.get("h2d", 0.0), v.get("bytes", 0.0), *pred[k]]
            for k, v in sorted(spans.items())
            if k in pred
        ]
        rows.append(
            {
                "op": "step_probe",
                "size": float(sc.workload.batch_size),
                "family": family,
                "model": model,
                "ratio": ratio,
                "mode": "dry" if dry else "wet",
                "seconds": statistics.median(s[2] for s in samples) if samples else 0.0,
                "fields": list(FIELDS),
                "samples": samples,
            }
        )
    return rows


def _probes(hardware: Any, models: tuple[str, ...]) -> Iterator[tuple[str, str, Any, float]]:
    from alisa.sim.catalog import model_config

    from .layer_gpu import _family_models

    for family, name in _family_models(models).items():
        model = {**model_config(name), "name": f"{name}-{LAYERS}l", "num_layers": LAYERS}
        for B in BATCHES:
            for ratio in RATIOS:
                prompt = PROMPT if ratio == 0 else PROMPT_RECOMPUTE
                yield family, name, probe_scenario(hardware, model, B, ratio, prompt=prompt), ratio


def measure_steps(hardware: dict[str, Any], models: tuple[str, ...]) -> list[dict]:
    """Raw rows: the probes run on the GPU at the executor's defaults."""
    from alisa.runtime.executor import RealOptions

    def make_opts(dry: bool) -> Any:
        return RealOptions(layer_trace_steps=STEPS, trace_later=0, gather_dry=dry)

    rows: list[dict] = []
    for family, name, sc, ratio in _probes(hardware, models):
        rows += probe_rows(sc, family, name, ratio, make_opts)
    return rows


def _samples(r: dict) -> list[dict[str, float]]:
    return [dict(zip(r["fields"], s, strict=True)) for s in r["samples"]]


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(fixed, slope): least squares (the line through them for two x values)."""
    import numpy as np

    slope, fixed = np.polyfit([x for x, _ in points], [y for _, y in points], 1)
    return float(fixed), float(slope)


def step_probe_section(rows: list[dict]) -> dict[str, Any] | None:
    """The probed terms (see the module's doc), or None without step-probe rows."""
    probes = [r for r in rows if r["op"] == "step_probe"]
    if not probes:
        return None
    by = {(r["family"], int(r["size"]), float(r["ratio"]), r["mode"]): r for r in probes}
    decode: dict[str, list[float]] = {}
    recompute: dict[str, list[float]] = {}
    for fam in sorted({k[0] for k in by}):
        # Phase II alone: the layer's time beyond the model's other terms, per batch
        pts = [
            (float(B), statistics.median((s["compute_s"] - s["predicted_compute_s"]) * 1e6 for s in _samples(r)))
            for (f, B, ratio, mode), r in by.items()
            if f == fam and ratio == 0.0 and mode == "dry"
        ]
        if len({x for x, _ in pts}) < 2:
            continue
        fixed, per_seq = _line(pts)
        decode[f"{fam}/spill"] = [round(fixed, 2), round(per_seq, 4)]
        # Phase III alone: beyond that, by rows recomputed
        rec = []
        for (f, B, ratio, mode), r in by.items():
            if f != fam or ratio == 0.0 or mode != "dry":
                continue
            ss = _samples(r)
            extra = [(s["compute_s"] - s["predicted_compute_s"]) * 1e6 - (fixed + B * per_seq) for s in ss]
            rec.append((statistics.median(s["recompute_rows"] for s in ss), statistics.median(extra)))
        if len({x for x, _ in rec}) >= 2:
            f0, per_row = _line(rec)
            recompute[fam] = [round(f0, 2), round(per_row, 5)]
    cs: list[float] = []
    gs: list[float] = []
    for (f, B, ratio, mode), wet in by.items():
        dry = by.get((f, B, ratio, "dry"))
        if mode != "wet" or dry is None:
            continue
        alone = {(s["step"], s["layer"]): s for s in _samples(dry)}
        for s in _samples(wet):
            d = alone.get((s["step"], s["layer"]))
            if d is None:
                continue
            overlap = min(d["compute_s"], s["predicted_gather_s"])
            if overlap < MIN_OVERLAP_S or s["gather_s"] <= 0:
                continue
            cs.append((s["compute_s"] - d["compute_s"]) / overlap)
            gs.append((s["gather_s"] - s["predicted_gather_s"]) / overlap)
    return {
        "decode_layer_us": decode,
        "recompute_layer_us": recompute,
        "compute_slowdown": round(max(0.0, statistics.median(cs)), 3) if cs else None,
        "gather_slowdown": round(max(0.0, statistics.median(gs)), 3) if gs else None,
        "samples": len(cs),
    }
