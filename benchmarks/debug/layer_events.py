"""Do per-layer CUDA events, or how far the host runs ahead, change how fast decode runs?

    python benchmarks/debug/layer_events.py OUT [policy:model:batch ...]

Dense OPT-6.7B b8 ran 7.7 ms per step in the steps whose layers were traced (an event
recorded around every layer) and ~10 ms in the others (validation matrix, 2026-11-23).
Runs a few scenarios untraced, fully traced, and with the host's run-ahead capped at a
few layers (``RealOptions.run_ahead_layers``), and prints mean step times. Writes OUT/layer_events.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    import torch

    from alisa.runtime.executor import RealExecutor, RealOptions
    from alisa.runtime.run import release_gpu
    from alisa.sim.scenario import load_scenario

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    gen = 96
    variants = {"plain": dict(layer_trace_steps=0, trace_later=0, run_ahead_layers=None),
                "traced": dict(layer_trace_steps=gen, trace_later=0),
                "ahead2": dict(layer_trace_steps=0, trace_later=0, run_ahead_layers=2),
                "ahead4": dict(layer_trace_steps=0, trace_later=0, run_ahead_layers=4),
                "ahead8": dict(layer_trace_steps=0, trace_later=0, run_ahead_layers=8)}
    rows = []
    points = [p.split(":") for p in sys.argv[2:]] or [
        ("dense-gpu", "opt-6.7b", "8"), ("dense-gpu", "llama-7b", "8"), ("alisa", "opt-6.7b", "8"),
        ("dense-gpu", "opt-6.7b", "32")]
    for pol, model, bs in points:
        b = int(bs)
        sc = load_scenario(f"scenarios/validation/{pol}.yaml",
                           [f"model={model}", f"workload.batch_size={b}", f"workload.gen_len={gen}", "sweep=null"])
        for name, kw in variants.items():
            r = RealExecutor(sc, RealOptions(**kw)).run()
            steps = [s.end_s - s.start_s for s in r.er.steps if s.phase != "prefill"][8:]
            ms = 1e3 * sum(steps) / len(steps)
            rows.append({"policy": pol, "model": model, "batch": b, "variant": name, "step_ms": ms})
            print(f"{pol:10s} {model:9s} b{b:<3d} {name:13s} {ms:7.2f} ms/step", flush=True)
            del r
            release_gpu()
    (out / "layer_events.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
