"""How near a tiny ALISA run's SWA reference sits to a tie, and how much the real backend's
precision moves it: per generated token and sequence, the smallest gap at any layer's
selection boundary (the g-th against the (g+1)-th candidate importance, heads summed as
the real backend does), the largest change of those candidates' importance when K, V
and q pass through fp16 as they do in the real backend (same tokens, teacher-forced),
and the top-2 logit margin.

    python benchmarks/debug/near_ties.py [--gen 16] [--prompt 32] [--rows 1]

The reference (accuracy/generate.py) keeps K and V in the activations' dtype (fp32 in the
tests); the real backend stores them in fp16 and its kernel reads q in fp16. Where the
change is of the gap's size, the two can select differently, and which way depends on
reduction order: a token difference between devices there is a near-tie, not a bug. The
run is the one of tests/test_real_backend.py (tiny llama, kv_sparsity 0.5, 28-token GPU
cache, fp32 activations); SWA's importance history is the policy's default, the window
at the longest context, so it changes with gen_len.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def trace(dec: Any, spec: Any, prompt: Any, gen: int, half: bool = False, forced: Any = None) -> tuple[Any, dict, Any]:
    """Greedy SWA decode as reference_generate, recording per step and layer the candidate
    importance and the attended tokens ({(token index, layer): (scores [B, n-w] heads
    summed, g, [set of attended tokens per sequence])}) and the logits' top-2 margin
    [B, gen]. half: K, V and q rounded through fp16. forced: tokens to feed."""
    import torch

    from alisa.accuracy.evaluate import masked_attention, prefill_observed
    from alisa.kernels.selection import LayerSelector, budget_tokens, split_window
    from alisa.runtime.decoder import KVCache

    c = dec.cfg
    B, P = prompt.shape
    N = P + gen
    cache = KVCache(c, B, N, dec.w["embed"].dtype, prompt.device)
    sels = [LayerSelector([spec] * B, c.num_kv_heads, N, True, prompt.device) for _ in range(c.num_layers)]

    def r(t: torch.Tensor) -> torch.Tensor:
        return t.half().to(t.dtype) if half else t

    cands: dict[tuple[int, int], tuple[torch.Tensor, int, list[set[int]]]] = {}
    margins = torch.zeros(B, gen)
    with torch.no_grad():
        x = prefill_observed(dec, prompt, cache, sels)
        logits = dec.logits(x[:, -1:])[:, -1]
        top2 = logits.topk(2, -1).values
        margins[:, 0] = (top2[:, 0] - top2[:, 1]).cpu()
        tok = logits.argmax(-1) if forced is None else forced[:, 0]
        out = [tok]
        for t in range(P, N - 1):
            idx = t - P + 1  # the token this step produces
            pos = torch.tensor([t], device=prompt.device)
            x = dec.embed(tok[:, None], pos)
            n = t + 1
            k = budget_tokens(spec.budget, n)
            w = split_window(k, spec.local_fraction)
            for layer in range(c.num_layers):
                cand = sels[layer].score[:, :, : n - w].sum(1).cpu().clone()
                _, q, kk, v = dec.qkv(layer, x, pos)
                K, V = cache.append(layer, r(kk), r(v))
                m = sels[layer].mask(n)
                cands[idx, layer] = (cand, k - w, [set(torch.nonzero(m[b, 0]).flatten().tolist()) for b in range(B)])
                o, p, _ = masked_attention(dec, r(q), K, V, m)
                sels[layer].observe(p.sum(2))
                x = dec.finish_layer(layer, x, o)
            logits = dec.logits(x)[:, -1]
            top2 = logits.topk(2, -1).values
            margins[:, idx] = (top2[:, 0] - top2[:, 1]).cpu()
            tok = logits.argmax(-1) if forced is None else forced[:, idx]
            out.append(tok)
    return torch.stack(out, 1).cpu(), cands, margins


def main() -> int:

    from alisa.runtime.executor import RealExecutor
    from tests.test_real_backend import opts, swa_spec, tiny

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--rows", type=int, nargs="*", default=None, help="sequences to print (default all)")
    args = ap.parse_args()

    pol = {"name": "alisa", "kv_sparsity": 0.5, "gpu_kv_budget_tokens": 28, "recompute_ratio": 0.5}
    ex = RealExecutor(tiny(pol, prompt=args.prompt, gen=args.gen), opts(selection="free"))
    dec, spec, prompt = ex.dec, swa_spec(ex), ex.prompt()
    toks, ref, margins = trace(dec, spec, prompt, args.gen, half=False)
    _, half, _ = trace(dec, spec, prompt, args.gen, half=True, forced=toks.to(prompt.device))
    B = prompt.shape[0]
    print(f"gen {args.gen}, prompt {args.prompt}, importance history {spec.history} steps")
    print("token  seq  boundary gap (layer)  fp16 change (layer)  gap/change  logit margin")
    for idx in range(1, args.gen):
        for b in range(B):
            if args.rows is not None and b not in args.rows:
                continue
            gap, gl, chg, cl = float("inf"), -1, 0.0, -1
            for (i, layer), (s, g, _) in ref.items():
                if i != idx or not 0 < g < s.shape[1]:
                    continue
                top = s[b].sort(descending=True).values
                if float(top[g - 1] - top[g]) < gap:
                    gap, gl = float(top[g - 1] - top[g]), layer
                d = float((half[i, layer][0][b] - s[b]).abs().max())
                if d > chg:
                    chg, cl = d, layer
            if gl < 0:
                continue
            ratio = gap / chg if chg > 0 else float("inf")
            print(
                f"{idx:5d}  {b:3d}  {gap:12.3e} ({gl})   {chg:12.3e} ({cl})   {ratio:9.2f}  "
                f"{float(margins[b, idx]):12.3e}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
