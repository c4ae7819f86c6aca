"""The peers comparison: real FlexGen and Hugging Face runs beside our real backend on the
lent GPU, every system under the same GPU memory cap, then the simulator's prediction of
each run with that GPU's calibrated profile (docs/peers.md).

    python benchmarks/peers/run_peers.py plan [--profile P]        # on any machine: the runs, their
                                                                    # scenarios checked, the time budget
    python benchmarks/peers/run_peers.py run OUT [--profile P]      # on the GPU: every run, raw JSON in OUT
    python benchmarks/peers/run_peers.py compare OUT [--profile P]  # on any machine: measured vs simulated

Points: scenarios/peers/offload.yaml (OPT-6.7B and OPT-13B where the KV cache does not fit
the GPU budget). Systems, and the simulator policy that predicts each:

    alisa            our backend, ALISA                 policy alisa
    dense-gpu        our backend, all on the GPU        dense-gpu (out of memory where it does not fit)
    flexgen-like     our backend, FlexGen's placement   flexgen, runtime alisa, weights on the GPU
    flexgen-0.1.8    FlexGen itself (benchmarks/peers/flexgen_peer.py)   flexgen (its own code)
    hf-dense         transformers generate, dynamic cache                 accelerate, device_map gpu
    hf-offloaded     ... cache_implementation="offloaded"                 accelerate, device_map gpu, cache offloaded
    hf-device-map    ... Accelerate's weight offload (device_map)         accelerate, device_map auto

The cap is each point's hardware.gpu_memory_gb; every process enforces it with
torch.cuda.set_per_process_memory_fraction (our backend through the same wrapper), and
our backend and the simulator also plan to it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from alisa.sim.bundled import resolve_scenario
from alisa.sim.errors import InputError
from alisa.sim.policies import make_policy
from alisa.sim.runner import simulate
from alisa.sim.scenario import Scenario, expand_sweep

POINTS = "peers/offload"
HERE = Path(__file__).resolve().parent
GIB = 2**30
STARTUP_S = 25.0  # interpreter, torch and CUDA start-up, the random weights (measured runs add it)

SYSTEMS: dict[str, dict[str, Any]] = {
    "alisa": {"policy": None},  # the points' own (ALISA)
    "dense-gpu": {"policy": {"name": "dense-gpu"}},
    "flexgen-like": {
        "policy": {"name": "flexgen", "runtime": "alisa", "weights_gpu_percent": 100, "cpu_cache_compute": False}
    },
    "flexgen-0.1.8": {"policy": {"name": "flexgen"}},
    "hf-dense": {"policy": {"name": "accelerate", "device_map": "gpu"}},
    "hf-offloaded": {"policy": {"name": "accelerate", "device_map": "gpu", "cache": "offloaded"}},
    "hf-device-map": {"policy": {"name": "accelerate", "device_map": "auto"}},
}


def points(profile: str) -> list[Scenario]:
    return [sc for _, sc in expand_sweep(resolve_scenario(POINTS), [f"hardware={profile}"])]


def system_scenario(sc: Scenario, system: str) -> Scenario:
    """The point with the system's policy (the simulator's model of that run)."""
    pol = SYSTEMS[system]["policy"]
    if pol is None:
        return sc
    data = sc.model_dump(mode="json")
    data["policy"] = dict(pol)
    if system == "flexgen-like":  # the KV share that fits beside the weights, as our LP places it
        probe = data | {"policy": {**pol, "cache_gpu_percent": None}}
        try:
            cg = make_policy(Scenario.model_validate(probe)).summary()["flexgen_policy"]["cache_gpu_percent"]
        except InputError:
            cg = 0.0
        data["policy"]["cache_gpu_percent"] = int(cg)
    return Scenario.model_validate(data)


def command(sc: Scenario, system: str, profile: str, out: Path) -> list[str]:
    cap = sc.hardware.gpu_memory_gb * 1e9 / GIB
    py = sys.executable
    name = sc.name
    if system.startswith("hf-"):
        cmd = [
            py,
            str(HERE / "hf_peer.py"),
            "--model",
            sc.model.name,
            "--batch",
            str(sc.workload.batch_size),
            "--prompt",
            str(sc.workload.prompt_len),
            "--gen",
            str(sc.workload.gen_len),
            "--mode",
            system.removeprefix("hf-"),
            "--gpu-cap-gb",
            f"{cap:.2f}",
            "--out",
            str(out / f"{name}-{system}.json"),
        ]
        if system == "hf-device-map":  # the weights the simulated device map keeps on the GPU
            lay = make_policy(system_scenario(sc, system)).layout
            cmd += ["--weights-gb", f"{lay.weights_gpu_bytes / GIB:.2f}"]
        return cmd
    sets = [
        f"hardware={profile}",
        "sweep=null",
        f"name={name}",
        f"model={sc.model.name}",
        f"workload.batch_size={sc.workload.batch_size}",
        f"hardware.gpu_memory_gb={sc.hardware.gpu_memory_gb}",
    ]
    pol = system_scenario(sc, system).policy.model_dump(mode="json", exclude_none=True)
    sets.append(f"policy={json.dumps(pol)}")
    if system == "flexgen-0.1.8":
        return [
            py,
            str(HERE / "flexgen_peer.py"),
            resolve_scenario(POINTS).as_posix(),
            *(f"--set={s}" for s in sets),
            "--gpu-cap-gb",
            f"{cap:.2f}",
            "--out",
            str(out / f"{name}-{system}.json"),
        ]
    wrapper = (
        "import sys, torch; t = torch.cuda.get_device_properties(0).total_memory; "
        f"torch.cuda.set_per_process_memory_fraction(min(1.0, {cap * GIB:.0f} / t)); "
        "from alisa.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return [
        py,
        "-c",
        wrapper,
        "run",
        resolve_scenario(POINTS).as_posix(),
        "--backend",
        "real",
        "--no-plots",
        "--out",
        str(out / f"{name}-{system}"),
        *(f"--set={s}" for s in sets),
    ]


def plan(profile: str, out: Path = Path("OUT")) -> list[dict[str, Any]]:
    """Every run, its scenario checked by simulating it, and its device time estimated."""
    rows = []
    for sc in points(profile):
        for system in SYSTEMS:
            ssc = system_scenario(sc, system)
            r, _ = simulate(ssc)
            busy = 0.0 if r["oom"] else r["prefill_time_s"] + r["total_time_s"]  # warm-up prefill + run
            rows.append(
                {
                    "point": sc.name,
                    "system": system,
                    "simulated_tok_s": r["throughput_tokens_per_s"],
                    "oom": r["oom_reason"] or "",
                    "estimate_s": STARTUP_S + busy,
                    "command": command(sc, system, profile, out),
                }
            )
    return rows


def run(out: Path, profile: str, budget_s: float) -> int:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log = []
    for row in plan(profile, out):
        if time.time() - t0 + row["estimate_s"] > budget_s:
            log.append({**row, "skipped": "time budget"})
            continue
        try:
            p = subprocess.run(row["command"], capture_output=True, text=True, timeout=max(60.0, 4 * row["estimate_s"]))
            log.append({**row, "rc": p.returncode, "stderr_tail": p.stderr[-1500:], "wall_s": time.time() - t0})
        except subprocess.TimeoutExpired:
            log.append({**row, "rc": None, "timeout": True, "wall_s": time.time() - t0})
        (out / "peers-log.json").write_text(json.dumps(log, indent=1))
    return 0


def measured(out: Path, point: str, system: str) -> dict[str, Any] | None:
    f = out / f"{point}-{system}.json"
    if f.is_file():
        return json.loads(f.read_text())
    res = out / f"{point}-{system}" / "result.json"
    if res.is_file():
        r = json.loads(res.read_text())
        return {"throughput_tokens_per_s": r["throughput_tokens_per_s"], "oom": r["oom_reason"] if r["oom"] else None}
    return None


def compare(out: Path, profile: str) -> list[dict[str, Any]]:
    rows = []
    for sc in points(profile):
        for system in SYSTEMS:
            m = measured(out, sc.name, system)
            r, _ = simulate(system_scenario(sc, system))
            got = None if m is None or m.get("oom") else m["throughput_tokens_per_s"]
            sim = None if r["oom"] else r["throughput_tokens_per_s"]
            err = (sim / got - 1.0) if got and sim else None
            rows.append(
                {
                    "point": sc.name,
                    "system": system,
                    "measured_tok_s": got,
                    "simulated_tok_s": sim,
                    "error": err,
                    "measured_oom": (m or {}).get("oom"),
                    "simulated_oom": r["oom_reason"],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("plan", "run", "compare"))
    ap.add_argument("out", nargs="?", default="peers-out")
    ap.add_argument("--profile", default="h100-80gb-measured", help="the lent GPU's calibrated profile")
    ap.add_argument("--budget-s", type=float, default=540.0, help="run: stop starting runs past this")
    args = ap.parse_args(argv)
    if args.what == "plan":
        rows = plan(args.profile)
        for r in rows:
            print(
                f"{r['point']:24s} {r['system']:14s} sim {r['simulated_tok_s']:8.1f} tok/s  "
                f"~{r['estimate_s']:5.0f} s  {r['oom']}"
            )
        total = sum(r["estimate_s"] for r in rows)
        print(
            f"\n{len(rows)} runs, about {total / 60:.1f} min of device time (each ~{STARTUP_S:.0f} s start-up "
            "plus its simulated warm-up and run)"
        )
        print("first: " + " ".join(shlex.quote(c) for c in rows[0]["command"]))
        return 0
    if args.what == "run":
        return run(Path(args.out), args.profile, args.budget_s)
    rows = compare(Path(args.out), args.profile)
    print(json.dumps(rows, indent=1))
    (Path(args.out) / "peers-compare.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
