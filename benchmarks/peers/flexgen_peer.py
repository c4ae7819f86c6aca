"""One measured run of FlexGen 0.1.8 (PyPI ``flexgen``, carried as a wheel with ``pulp``)
through its Python API, with dummy weights (FlexGen's ``_DUMMY_`` path: random tensors,
nothing downloaded) and random token ids (its CLI fetches a tokenizer; this does not).
The policy is the scenario's FlexGen policy (its knobs, or a pasted command line), so the
simulator's prediction and the run use the same placement.

    python benchmarks/peers/flexgen_peer.py SCENARIO [--set PATH=VALUE ...] --gpu-cap-gb 24 --out run.json
    python benchmarks/peers/flexgen_peer.py SCENARIO --dry-run     # the FlexGen Policy, no GPU needed

Throughput as flex_opt.py reports it: batch x gen / (prefill + decode), from FlexGen's own
timers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from alisa.sim.bundled import resolve_scenario
from alisa.sim.policies import make_policy
from alisa.sim.scenario import FlexGenPolicyConfig, load_scenario


def flexgen_policy_args(sc: Any) -> dict[str, Any]:
    """FlexGen's ``Policy`` fields for the scenario: its fixed knobs, and where the
    scenario leaves them to the search, the placement our LP chose."""
    cfg = sc.policy
    if not isinstance(cfg, FlexGenPolicyConfig):
        raise SystemExit(f"{sc.name}: policy {cfg.name} is not flexgen")
    pol = make_policy(sc).summary()["flexgen_policy"]
    wg = cfg.weights_gpu_percent if cfg.weights_gpu_percent is not None else round(pol["weights_gpu_percent"])
    cg = cfg.cache_gpu_percent if cfg.cache_gpu_percent is not None else int(pol["cache_gpu_percent"])
    return {
        "gpu_batch_size": pol["gpu_batch_size"],
        "num_gpu_batches": pol["num_gpu_batches"],
        "w_gpu_percent": wg,
        "w_cpu_percent": cfg.weights_cpu_percent if cfg.weights_cpu_percent is not None else 100 - wg,
        "cache_gpu_percent": cg,
        "cache_cpu_percent": cfg.cache_cpu_percent if cfg.cache_cpu_percent is not None else 100 - cg,
        "act_gpu_percent": cfg.act_gpu_percent,
        "act_cpu_percent": cfg.act_cpu_percent,
        "overlap": cfg.overlap,
        "sep_layer": True,
        "pin_weight": cfg.pin_weight,
        "cpu_cache_compute": bool(pol["cpu_cache_compute"]),
        "attn_sparsity": 1.0,
        "compress_weight": cfg.compress_weight,
        "compress_cache": cfg.compress_cache,
    }


def run(sc: Any, fields: dict[str, Any], cap_gb: float, offload_dir: str) -> dict[str, Any]:
    import numpy as np
    import torch
    from flexgen.compression import CompressionConfig
    from flexgen.flex_opt import OptLM, Policy, get_opt_config
    from flexgen.pytorch_backend import TorchDevice, TorchDisk, TorchMixedDevice
    from flexgen.timer import timers
    from flexgen.utils import ExecutionEnv

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * 2**30 / total))
    policy = Policy(
        **fields,
        comp_weight_config=CompressionConfig(num_bits=4, group_size=64, group_dim=0, symmetric=False),
        comp_cache_config=CompressionConfig(num_bits=4, group_size=64, group_dim=2, symmetric=False),
    )
    gpu, cpu, disk = TorchDevice("cuda:0"), TorchDevice("cpu"), TorchDisk(offload_dir)
    env = ExecutionEnv(gpu=gpu, cpu=cpu, disk=disk, mixed=TorchMixedDevice([gpu, cpu, disk]))
    wl = sc.workload
    rng = np.random.default_rng(sc.seed)
    inputs = [list(rng.integers(4, 50000, wl.prompt_len)) for _ in range(wl.batch_size)]
    model = OptLM(get_opt_config(f"facebook/{sc.model.name}"), env, "_DUMMY_", policy)
    try:
        model.generate([x[:32] for x in inputs], max_new_tokens=1)  # warm-up, as flex_opt.py
        timers("generate").reset()
        model.generate(inputs, max_new_tokens=wl.gen_len)
        costs = timers("generate").costs
    finally:
        env.close_copy_threads()
    prefill, decode = costs[0], sum(costs[1:])
    return {
        "prefill_s": prefill,
        "decode_s": decode,
        "total_s": prefill + decode,
        "throughput_tokens_per_s": wl.batch_size * wl.gen_len / (prefill + decode),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(),
        "device": torch.cuda.get_device_name(0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    ap.add_argument("--gpu-cap-gb", type=float, default=None, help="default: the scenario's hardware.gpu_memory_gb")
    ap.add_argument("--offload-dir", default="/tmp/flexgen-offload")
    ap.add_argument("--out")
    ap.add_argument("--dry-run", action="store_true", help="print the FlexGen Policy; needs no GPU nor flexgen")
    args = ap.parse_args(argv)
    sc = load_scenario(resolve_scenario(args.scenario), args.set)
    fields = flexgen_policy_args(sc)
    cap = args.gpu_cap_gb if args.gpu_cap_gb is not None else sc.hardware.gpu_memory_gb / 1.073741824
    rec: dict[str, Any] = {
        "system": "flexgen-0.1.8",
        "scenario": sc.name,
        "policy": fields,
        "gpu_cap_gib": cap,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if not args.dry_run:
        import torch

        try:
            rec.update(run(sc, fields, cap, args.offload_dir))
        except torch.OutOfMemoryError as e:
            rec["oom"] = str(e).splitlines()[0]
    text = json.dumps(rec, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
