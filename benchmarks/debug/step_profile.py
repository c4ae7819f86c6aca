"""Where the real backend's host time goes in a decode step: cProfile of the executor's
main thread over a short validation run (after the executor's untimed rehearsal).

    python benchmarks/debug/step_profile.py OUT [model:batch ...]   # default llama-7b:8 llama-7b:32

Per point: the measured step time, and the functions (torch ops included, as builtins)
by own time per step, written to OUT/step_profile-<model>-b<batch>.txt. cProfile adds
a few microseconds to every Python call, so read shares, not absolute times.
"""
from __future__ import annotations

import cProfile
import io
import pstats
import sys
from pathlib import Path


def profile_point(out: Path, model: str, batch: int, gen: int = 48) -> str:
    from alisa.runtime.executor import RealExecutor, RealOptions
    from alisa.sim.scenario import load_scenario

    sc = load_scenario("scenarios/validation/alisa.yaml",
                       [f"model={model}", f"workload.batch_size={batch}", f"workload.gen_len={gen}"])
    ex = RealExecutor(sc, RealOptions(layer_trace_steps=0))
    prof = cProfile.Profile()
    inner = ex._run

    def run():  # type: ignore[no-untyped-def]
        prof.enable()
        try:
            return inner()
        finally:
            prof.disable()
    ex._run = run  # type: ignore[method-assign]
    r = ex.run()
    steps = [s for s in r.er.steps if s.phase != "prefill"]
    mean_ms = 1e3 * sum(s.end_s - s.start_s for s in steps) / len(steps)
    buf = io.StringIO()
    ps = pstats.Stats(prof, stream=buf)
    buf.write(f"{model} b{batch} gen {gen}: {len(steps)} decode steps, mean {mean_ms:.2f} ms per step "
              f"(profiled; cumulative times below are for the whole run)\n")
    ps.sort_stats("tottime").print_stats(45)
    ps.sort_stats("cumulative").print_stats(45)
    text = buf.getvalue()
    (out / f"step_profile-{model}-b{batch}.txt").write_text(text)
    del ex
    return text


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    points = sys.argv[2:] or ["llama-7b:8", "llama-7b:32"]
    for p in points:
        model, b = p.split(":")
        text = profile_point(out, model, int(b))
        print("\n".join(text.splitlines()[:70]), flush=True)
        import torch

        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
