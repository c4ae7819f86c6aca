"""Simulated against measured step time, in blocks of steps over a run.

    python benchmarks/debug/step_blocks.py REAL_DIR SIM_DIR [BLOCK]

REAL_DIR and SIM_DIR hold the ``steps.csv`` of a real and a simulated run of one scenario
(`alisa validate`'s ``.../real`` and ``.../sim``). Per block of BLOCK steps (default 64):
the phases, mean step time of each side in ms, the signed error, the mean recomputed tokens
and the first step's H2D MB. The block figures in docs/validation.md come from this.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path


def main() -> int:
    real, sim = (list(csv.DictReader((Path(d) / "steps.csv").read_text().splitlines())) for d in sys.argv[1:3])
    block = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    for i in range(1, len(real), block):
        r, s = real[i:i + block], sim[i:i + block]
        rt, st = (sum(float(x["time_s"]) for x in side) / len(side) for side in (r, s))
        phases = "".join(sorted({x["phase"] for x in r}))
        rec = sum(float(x["recomputed_tokens"]) for x in r) / len(r)
        print(f"{i:5d} {phases:6s} real {1e3 * rt:7.2f} sim {1e3 * st:7.2f} err {100 * (st / rt - 1):+6.1f}% "
              f"rec {rec:7.0f} h2d MB {float(r[0]['h2d_bytes']) / 1e6:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
