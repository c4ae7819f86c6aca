"""Does a real model's process spend the host time that the calibration's narrow probe does?

    python benchmarks/debug/host_own_real_vs_probe.py OUT [BATCH ...]

The tenth validation matrix simulated ALISA's OPT-6.7B steps 4-29% fast: the simulated host,
fitted on the calibration's narrow-model probes (median of three processes), hid under
the GPU while the real runs' host set the step. This measures the host's own time per
decode step with the calibration's own accounting (``_host_per_step``: waits for the GPU
taken off) in alternating child processes: the validation matrix's ALISA scenario with the
narrow probe model (hidden 4096, FFN and vocabulary 1024) and with the real OPT-6.7B, at the
same batch, prompt 512 and 64 steps, without recompute (Phase II fetches on both sides).
Processes: narrow, real, alternating, ``HOR_PAIRS`` (default 3) pairs per batch size. If the real model's processes spend more host time than the
narrow ones for the same rows, the probes are biased; if the two interleave, it is the
processes' own spread. Results: OUT/host_own_real_vs_probe.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

FIELDS = ("own_seconds", "fetch_own_seconds", "flush_own_seconds", "gather_layer_seconds", "gather_bytes",
          "fetch_layer_own_seconds", "copy_issue_1part_seconds", "seconds")


def scenario(variant: str, batch: int):  # type: ignore[no-untyped-def]
    from alisa.calibration.host_issue import WIDTH
    from alisa.sim.scenario import load_scenario

    # no recompute: both models keep the same plan (Phase II fetches) at every batch size;
    # with the matrix's automatic ratio OPT-6.7B b32 recomputes from the first step
    sets = ["sweep=null", f"workload.batch_size={batch}", "workload.gen_len=64", "policy.recompute=false"]
    if variant == "real":
        return load_scenario("scenarios/validation/alisa.yaml", ["model=opt-6.7b", *sets])
    narrow = dict(name="probe-32l", family="llama", num_layers=32, hidden_size=WIDTH, num_heads=WIDTH // 128,
                  num_kv_heads=WIDTH // 128, head_dim=128, ffn_dim=1024, vocab_size=1024, activation="silu",
                  norm="rmsnorm", max_positions=4096)
    return load_scenario("scenarios/validation/alisa.yaml", [f"model={json.dumps(narrow)}", *sets])


def child(variant: str, batch: int) -> dict[str, float]:
    from alisa.calibration.host_issue import _host_per_step

    r = _host_per_step(scenario(variant, batch))
    try:   # the vCPU the main thread ended on (/proc field 39), for placement studies
        cpu = int(Path("/proc/thread-self/stat").read_text().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        cpu = -1
    return {k: r[k] for k in FIELDS if k in r} | {"main_cpu": cpu}


def main() -> int:
    if sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
        return 0
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in sys.argv[2:]] or [8, 32]
    rows: list[dict] = []
    print(f"{'batch':>5s} {'variant':8s} {'own ms':>8s} {'fetch ms':>9s} {'outside':>8s} {'flush ms':>9s} "
          f"{'gather us':>10s} {'MB/layer':>9s} {'fetch/layer':>11s} {'clock ms':>9s}", flush=True)
    for b in batches:
        for variant in ("narrow", "real") * int(os.environ.get("HOR_PAIRS", "3")):
            p = subprocess.run([sys.executable, __file__, "--child", variant, str(b)], check=False,
                               capture_output=True, text=True)
            if p.returncode != 0:
                print(f"{b} {variant}: failed\n{p.stderr[-3000:]}", flush=True)
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1]) | {"batch": b, "variant": variant}
            rows.append(r)
            outside = r["own_seconds"] - r["fetch_own_seconds"] - r.get("flush_own_seconds", 0.0)
            print(f"{b:5d} {variant:8s} {1e3 * r['own_seconds']:8.2f} {1e3 * r['fetch_own_seconds']:9.2f} "
                  f"{1e3 * outside:8.2f} {1e3 * r.get('flush_own_seconds', 0.0):9.3f} "
                  f"{1e6 * r.get('gather_layer_seconds', 0.0):10.1f} {r.get('gather_bytes', 0.0) / 1e6:9.2f} "
                  f"{1e6 * r.get('fetch_layer_own_seconds', 0.0):11.1f} {1e3 * r['seconds']:9.2f}", flush=True)
            (out / "host_own_real_vs_probe.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
