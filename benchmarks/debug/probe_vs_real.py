"""Do the calibration's host probes see the host the real runs see?

    python benchmarks/debug/probe_vs_real.py OUT [variant ...]

The simulator's Phase III steps came out 2-13% fast in the eighth matrix, and the real
runs' traced layers spend more on the host than the calibrated fields say (copy issue
78-98 us a Phase III layer at LLaMA-7B b8 against the probe's 40-60). This runs, in one
child process per repeat, the calibration's recompute probe as calibration builds it, the
same probe with the real models' FFN and vocabulary (so its GPU is as busy as a real
run's), and the validation matrix's ALISA LLaMA-7B b8 x 1024 point, with every step's
host spans traced. Per variant and window of steps it prints the mean step time and the
per-layer medians of the host's spans (layer 0 left out: it holds the step's first
fetch). Results: OUT/probe_vs_real.json.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SPANS = ("issue", "fetch ahead", "throttle", "gpu layer", "gather", "copy issue", "before copy", "before gather")
STEP_SPANS = ("select", "wait selection", "gpu select", "gpu before select", "end")


def _kind(name: str) -> tuple[str, int]:
    if " L" in name:
        k, _, l = name.rpartition(" L")
        return k, int(l)
    return name, -1


def scenario(variant: str):  # type: ignore[no-untyped-def]
    import yaml
    from alisa.calibration.host_issue import PROBES, PROMPT, WIDTH
    from alisa.sim.scenario import build_scenario, load_scenario

    if variant.startswith("real"):       # real (LLaMA-7B), real-opt (OPT-6.7B): b8 x 1024
        model = "opt-6.7b" if variant == "real-opt" else "llama-7b"
        return load_scenario("scenarios/validation/alisa.yaml",
                             [f"model={model}", "workload.batch_size=8", "workload.gen_len=1024", "sweep=null"])
    hw = yaml.safe_load(Path("hardware_profiles/h100-80gb-measured.yaml").read_text())
    ffn, vocab = (11008, 32000) if variant == "probe-ffn" else (1024, 1024)
    layers = int(os.environ.get("PVR_LAYERS", "32"))      # PVR_LAYERS, PVR_GEN: a quick check on the CPU
    model = dict(name="probe", family="llama", num_layers=layers, hidden_size=WIDTH, num_heads=WIDTH // 128,
                 num_kv_heads=WIDTH // 128, head_dim=128, ffn_dim=ffn, vocab_size=vocab, activation="silu",
                 norm="rmsnorm", max_positions=4096)
    return build_scenario({"name": "host-probe", "model": model, "hardware": hw,
                           "workload": {"batch_size": 8, "prompt_len": PROMPT, "gen_len": int(os.environ.get("PVR_GEN", "64"))},
                           "policy": PROBES["recompute"], "seed": 0}, "<probe_vs_real>")


def child(variant: str) -> list[dict[str, float]]:
    from alisa.runtime.executor import RealExecutor, RealOptions
    from alisa.runtime.run import release_gpu

    sc = scenario(variant)
    steps = sc.workload.gen_len
    ex = RealExecutor(sc, RealOptions(layer_trace_steps=steps, trace_later=0, device=os.environ.get("PVR_DEVICE")))
    r = ex.run()
    dec = [s for s in r.er.steps if s.phase != "prefill"]
    per: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    last_end: dict[int, float] = {}         # the GPU's last layer's end, by step
    sel_start: dict[int, float] = {}
    for lane, name, t_s, dur_s, args in r.er.events:
        k, l = _kind(name)
        step = args.get("step", -1) if isinstance(args, dict) else -1
        if lane == "GPU compute" and name == f"L{sc.model.num_layers - 1}":
            last_end[step] = t_s + dur_s
        if lane == "GPU compute" and name == "select":
            sel_start[step] = t_s
        if l == 0 or step < 0:
            continue
        if lane == "GPU compute":
            k = "gpu " + ("layer" if k.startswith("L") else k)
        per[step][k].append(1e6 * dur_s)
        if lane == "H2D" and "bytes" in args:
            per[step]["h2d_mb"].append(args["bytes"] / 1e6)
    for step, t in sel_start.items():
        if step - 1 in last_end:      # the GPU between the last layer and the selection: LM head, idle
            per[step]["gpu before select"].append(1e6 * (t - last_end[step - 1]))
    windows = [(2, steps)] if steps <= 64 else [(2, 64), (256, 384), (512, 640), (768, 896), (896, steps)]
    out = []
    for lo, hi in windows:
        idx = [i for i in range(lo, min(hi, len(dec)))]
        row: dict[str, float] = {"lo": lo, "hi": hi,
                                 "step_ms": 1e3 * statistics.mean(dec[i].time_s for i in idx),
                                 "phase3": sum(dec[i].phase == "III" for i in idx) / len(idx)}
        for k in SPANS + STEP_SPANS + ("h2d_mb",):
            xs = [x for i in idx for x in per[i].get(k, [])]
            row[k] = statistics.median(xs) if xs else 0.0
        # the host's own spans (layer 0 left out, as above), and its waits for the GPU
        host = [sum(sum(v) for kk, v in per[i].items() if kk in ("issue", "fetch ahead", "select", "end")) for i in idx]
        row["host_ms"] = statistics.mean(host) / 1e3
        row["throttle_ms"] = statistics.mean(sum(per[i].get("throttle", [])) for i in idx) / 1e3
        out.append(row)
    del ex, r
    release_gpu()
    return out


def main() -> int:
    if sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        return 0
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    names = sys.argv[2:] or ["probe", "probe-ffn", "real", "probe", "probe-ffn"]
    results: list[tuple[str, list[dict[str, float]]]] = []
    print(f"{'variant':10s} {'steps':>9s} {'III':>4s} {'step ms':>8s} {'host ms':>8s} {'thr ms':>7s} " +
          " ".join(f"{k[:11]:>11s}" for k in SPANS + STEP_SPANS) + f" {'MB/layer':>8s}", flush=True)
    for name in names:
        p = subprocess.run([sys.executable, __file__, "--child", name], env=dict(os.environ), check=False,
                           capture_output=True, text=True)
        if p.returncode != 0:
            print(f"{name}: failed\n{p.stderr[-3000:]}", flush=True)
            continue
        rows = json.loads(p.stdout.strip().splitlines()[-1])
        results.append((name, rows))
        for r in rows:
            print(f"{name:10s} {r['lo']:4.0f}-{r['hi']:<4.0f} {r['phase3']:4.1f} {r['step_ms']:8.2f} {r['host_ms']:8.2f} {r['throttle_ms']:7.2f} " +
                  " ".join(f"{r[k]:11.1f}" for k in SPANS + STEP_SPANS) + f" {r['h2d_mb']:8.2f}", flush=True)
        (out / "probe_vs_real.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
