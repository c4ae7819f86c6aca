"""Smoke check of the calibration's newer probes on a GPU, before a full calibration.

    python benchmarks/debug/new_probes_smoke.py

Times one prefill layer probe (LLaMA-7B width, two layers, spill layout, batch 8) and runs
the host probe set once in a child process with a short generation, printing what each
gives. Exits non-zero if either fails.
"""
from __future__ import annotations

import time
from pathlib import Path

import yaml


def main() -> int:
    from alisa.calibration.host_issue import _probe_rows_in_child
    from alisa.calibration.layer_gpu import PREFILL_CACHES, PREFILL_PROMPT, _time_prefill
    from alisa.sim.catalog import model_config
    from alisa.sim.scenario import build_scenario

    hw = yaml.safe_load(Path("hardware_profiles/h100-80gb-measured.yaml").read_text())
    model = {**model_config("llama-7b"), "name": "llama-7b-2l", "num_layers": 2}
    for cache in ("slots", "spill"):
        sc = build_scenario({"name": "smoke", "model": model, "hardware": hw,
                             "workload": {"batch_size": 8, "prompt_len": PREFILL_PROMPT, "gen_len": 8},
                             "policy": PREFILL_CACHES[cache], "seed": 0}, "<smoke>")
        t0 = time.time()
        print(f"prefill layer {cache} b8: {1e3 * _time_prefill(sc, 3):.3f} ms ({time.time() - t0:.1f} s)")
    t0 = time.time()
    rows = _probe_rows_in_child(hw, 6)
    print(f"host probes in a child: {len(rows)} rows ({time.time() - t0:.1f} s)")
    for r in rows:
        if r["op"] in ("host_issue:spill", "host_issue:recompute"):
            print(r["op"], r["batch"], r["layers"], {k: r.get(k) for k in ("own_seconds", "fetch_own_seconds",
                                                                           "flush_own_seconds", "flush_bytes")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
