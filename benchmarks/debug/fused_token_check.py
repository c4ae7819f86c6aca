"""Does the device gather's launch (fused or per part, program count, copy-stream priority)
change a tiny ALISA run's tokens on the GPU? Each combination, twice, against the SWA
reference (the check of tests/test_real_backend.py's fused-gather test, unrolled).

    python benchmarks/debug/fused_token_check.py
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    import torch

    from tests.test_real_backend import opts, reference_generate as ref_gen, swa_spec, tiny
    from alisa.runtime.executor import RealExecutor

    pol = {"name": "alisa", "kv_sparsity": 0.5, "gpu_kv_budget_tokens": 28, "recompute_ratio": 0.5, "gather": "device"}
    bad = 0
    for fused, progs, prio, gen in itertools.product((True, False), (3, 8), (0, -1), (16, 20)):
        for rep in range(2):
            ex = RealExecutor(tiny(pol, prompt=32, gen=gen),
                              opts(selection="free", gather_fused=fused, gather_programs=progs, copy_stream_priority=prio))
            run = ex.run()
            ref = ref_gen(ex.dec, ex.prompt(), gen, swa_spec(ex)).cpu()
            same = torch.equal(run.tokens, ref)
            diff = (run.tokens != ref).nonzero().tolist()[:4]
            bad += not same
            print(f"fused {fused!s:5s} programs {progs} priority {prio:2d} gen {gen} rep {rep}: "
                  f"{'same' if same else 'DIFFERENT at ' + str(diff)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
