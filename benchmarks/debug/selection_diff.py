"""Where the real backend's SWA selection first leaves the torch reference's, for the
tiny run of tests/test_real_backend.py: per decode step, layer and sequence, the set of
attended tokens of each, and at the first difference the reference's importance gap at
its selection boundary.

    python benchmarks/debug/selection_diff.py [--gen 16] [--gather host|device] [--eager]

On the CPU (Triton interpreter) the two agree at every step; on a GPU the tiny run left
the reference's tokens at gen 16-18 (docs/validation.md, "Fourteenth session"). This
finds the step and layer where that starts. The executor is stopped after each selection
to read it (a debug run: slow on purpose).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # near_ties: the reference's trace


def executor_sets(ex: Any) -> tuple[dict, Any]:
    """Run the executor, reading each step's attended tokens per layer and sequence right
    after its selection; returns ({(n, layer): [set per sequence]}, tokens)."""
    import torch

    from alisa.sim.policies.alisa import swa_budget

    sets: dict[tuple[int, int], list[set[int]]] = {}
    orig = ex._select

    def hooked(plan: Any) -> Any:
        out = orig(plan)
        n = out[1]
        if ex.d.cuda:
            torch.cuda.synchronize()
        a, _ = swa_budget(n, ex.s, ex.lf)
        a = min(a, plan.attended_tokens) if plan.attended_tokens else a
        toks = ex.slots.tok_buf[:, :, :a].cpu()
        for layer in range(toks.shape[0]):
            sets[n, layer] = [set(toks[layer, b].tolist()) for b in range(toks.shape[1])]
        return out

    ex._select = hooked
    run = ex.run()
    return sets, run.tokens


def main() -> int:
    from near_ties import trace

    from alisa.runtime.executor import RealExecutor
    from tests.test_real_backend import opts, swa_spec, tiny

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--gather", choices=("host", "device"), default="host")
    ap.add_argument("--eager", action="store_true", help="decode without CUDA graphs")
    args = ap.parse_args()

    pol = {
        "name": "alisa",
        "kv_sparsity": 0.5,
        "gpu_kv_budget_tokens": 28,
        "recompute_ratio": 0.5,
        "gather": args.gather,
    }
    ex = RealExecutor(
        tiny(pol, prompt=args.prompt, gen=args.gen), opts(selection="free", **({"graphs": False} if args.eager else {}))
    )
    # the reference's attended tokens and candidate importance, keyed by context n
    _, steps, _ = trace(ex.dec, swa_spec(ex), ex.prompt(), args.gen)
    ref = {(args.prompt + i, layer): sets for (i, layer), (_, _, sets) in steps.items()}
    scores = {(args.prompt + i, layer): cand for (i, layer), (cand, _, _) in steps.items()}
    got, _ = executor_sets(ex)
    diffs = []
    for key in sorted(ref):
        if key not in got:
            continue
        for b, (r, g) in enumerate(zip(ref[key], got[key], strict=True)):
            if r != g:
                diffs.append((key, b, sorted(r - g), sorted(g - r)))
    compared = len([k for k in ref if k in got])
    print(
        f"gen {args.gen}, gather {args.gather}: {compared} (step, layer) selections compared, "
        f"{len(diffs)} differ (sequence-wise)"
    )
    for (n, layer), b, only_ref, only_run in diffs[:10]:
        s = scores[n, layer][b]
        print(
            f"  context {n} (token {n - args.prompt}) layer {layer} seq {b}: reference only {only_ref}, "
            f"run only {only_run}; reference importance "
            + ", ".join(f"{t}: {float(s[t]):.6f}" for t in only_ref + only_run if t < s.shape[0])
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
