"""Summarise paper-style sweeps: ALISA's throughput over each baseline, per point.

    python benchmarks/paper_summary.py results/paper [--hardware-label v100-32gb]

Reads every */sweep.json under the folder (written by `alisa sweep scenarios/paper/...`)
and prints a Markdown table: model, batch, gen_len, tokens/s per policy, and the ratios
ALISA/FlexGen and ALISA/vLLM (n/a where the baseline ran out of memory).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/paper")
    rows: dict[tuple, dict[str, float | None]] = {}
    for f in sorted(root.glob("*/sweep.json")):
        for r in json.loads(f.read_text()):
            sc = r["scenario"]
            key = (sc["model"], sc["hardware"], sc["workload"]["batch_size"], sc["workload"]["gen_len"])
            rows.setdefault(key, {})[r["policy"]] = None if r["oom"] else r["throughput_tokens_per_s"]
    pols = ["alisa", "flexgen", "vllm", "accelerate"]
    print(
        "| model | hardware | batch | gen | "
        + " | ".join(f"{p} tok/s" for p in pols)
        + " | ALISA/FlexGen | ALISA/vLLM |"
    )
    print("|" + "---|" * (4 + len(pols) + 2))
    ratios: dict[str, list[float]] = {"flexgen": [], "vllm": []}
    for key in sorted(rows):
        v = rows[key]
        cells = [f"{v[p]:.1f}" if v.get(p) else "OOM" for p in pols]
        rs = []
        for b in ("flexgen", "vllm"):
            ours, theirs = v.get("alisa"), v.get(b)
            if ours and theirs:
                ratios[b].append(ours / theirs)
                rs.append(f"{ours / theirs:.2f}")
            else:
                rs.append("n/a")
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | " + " | ".join(cells) + " | " + " | ".join(rs) + " |")
    for b, xs in ratios.items():
        if xs:
            xs.sort()
            print(
                f"\nALISA/{b}: min {xs[0]:.2f}, median {xs[len(xs) // 2]:.2f}, max {xs[-1]:.2f} over {len(xs)} points"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
