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


def reference_sets(dec: Any, spec: Any, prompt: Any, gen: int) -> tuple[dict, dict]:
    """{(context n, layer): [set of attended tokens per sequence]} of the SWA reference,
    and {(n, layer): candidate importance [B, n - w] heads summed} before each mask."""
    import torch

    from alisa.accuracy.evaluate import masked_attention, prefill_observed
    from alisa.kernels.selection import LayerSelector
    from alisa.runtime.decoder import KVCache

    c = dec.cfg
    B, P = prompt.shape
    N = P + gen
    cache = KVCache(c, B, N, dec.w["embed"].dtype, prompt.device)
    sels = [LayerSelector([spec] * B, c.num_kv_heads, N, True, prompt.device) for _ in range(c.num_layers)]
    sets: dict[tuple[int, int], list[set[int]]] = {}
    scores: dict[tuple[int, int], Any] = {}
    with torch.no_grad():
        x = prefill_observed(dec, prompt, cache, sels)
        tok = dec.logits(x[:, -1:])[:, -1].argmax(-1)
        for t in range(P, N - 1):
            n = t + 1
            pos = torch.tensor([t], device=prompt.device)
            x = dec.embed(tok[:, None], pos)
            for layer in range(c.num_layers):
                scores[n, layer] = sels[layer].score[:, :, :n].sum(1).cpu().clone()
                _, q, k, v = dec.qkv(layer, x, pos)
                K, V = cache.append(layer, k, v)
                m = sels[layer].mask(n)
                sets[n, layer] = [set(torch.nonzero(m[b, 0]).flatten().tolist()) for b in range(B)]
                o, p, _ = masked_attention(dec, q, K, V, m)
                sels[layer].observe(p.sum(2))
                x = dec.finish_layer(layer, x, o)
            tok = dec.logits(x)[:, -1].argmax(-1)
    return sets, scores


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
    from alisa.runtime.executor import RealExecutor
    from tests.test_real_backend import opts, swa_spec, tiny

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--gather", choices=("host", "device"), default="host")
    ap.add_argument("--eager", action="store_true", help="decode without CUDA graphs")
    args = ap.parse_args()

    pol = {"name": "alisa", "kv_sparsity": 0.5, "gpu_kv_budget_tokens": 28, "recompute_ratio": 0.5,
           "gather": args.gather}
    ex = RealExecutor(tiny(pol, prompt=args.prompt, gen=args.gen),
                      opts(selection="free", **({"graphs": False} if args.eager else {})))
    ref, scores = reference_sets(ex.dec, swa_spec(ex), ex.prompt(), args.gen)
    got, _ = executor_sets(ex)
    diffs = []
    for key in sorted(ref):
        if key not in got:
            continue
        for b, (r, g) in enumerate(zip(ref[key], got[key])):
            if r != g:
                diffs.append((key, b, sorted(r - g), sorted(g - r)))
    compared = len([k for k in ref if k in got])
    print(f"gen {args.gen}, gather {args.gather}: {compared} (step, layer) selections compared, "
          f"{len(diffs)} differ (sequence-wise)")
    for (n, layer), b, only_ref, only_run in diffs[:10]:
        s = scores[n, layer][b]
        print(f"  context {n} (token {n - args.prompt}) layer {layer} seq {b}: reference only {only_ref}, "
              f"run only {only_run}; reference importance "
              + ", ".join(f"{t}: {float(s[t]):.6f}" for t in only_ref + only_run if t < s.shape[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
