"""One measured run of Hugging Face transformers' ``generate`` with random weights at a
catalog model's real configuration: the dynamic cache on the GPU (``--mode dense``), its
offloaded cache (``cache_implementation="offloaded"``), or Accelerate's ``device_map``
weight offload sized to the memory cap (``device-map``). Token ids in, no tokenizer, no
download. Throughput as FlexGen's benchmarks define it: batch x gen / (prefill + decode).

    python benchmarks/peers/hf_peer.py --model opt-6.7b --batch 32 --prompt 512 --gen 128 \\
        --mode offloaded --gpu-cap-gb 24 --out run.json [--device cpu --layers 2]

Needs torch and transformers (and accelerate for device-map); ``--device cpu`` with a few
layers is the smoke test the suite runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any


def opt_config(name: str, layers: int | None, tiny: bool = False) -> Any:
    from transformers import OPTConfig

    from alisa.sim.catalog import get_model

    m = get_model(name)
    if m.family != "opt":
        raise SystemExit(f"hf_peer runs OPT models; {name} is {m.family}")
    # --tiny: the model's structure at toy widths (the smoke test's path through generate)
    hidden, ffn, heads, vocab = (64, 256, 4, 512) if tiny else (m.hidden_size, m.ffn_dim, m.num_heads, m.vocab_size)
    return OPTConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers or m.num_layers,
        ffn_dim=ffn,
        num_attention_heads=heads,
        max_position_embeddings=m.max_positions,
        word_embed_proj_dim=hidden,
        do_layer_norm_before=True,
    )


def build(args: argparse.Namespace) -> Any:
    import torch
    from transformers import OPTForCausalLM

    cfg = opt_config(args.model, args.layers, args.tiny)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    if args.mode != "device-map":
        with torch.device(args.device):
            model = OPTForCausalLM(cfg).to(dtype)  # random weights, made where they run
        return model.eval()
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights

    with init_empty_weights():
        model = OPTForCausalLM(cfg).to(dtype)
    # the weights that fit next to the KV budget stay on the GPU, the rest stream from the host
    budget = f"{args.weights_gb or args.gpu_cap_gb / 2:.1f}GiB"
    dmap = infer_auto_device_map(
        model, max_memory={0: budget, "cpu": "400GiB"}, no_split_module_classes=["OPTDecoderLayer"]
    )
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        p.data.normal_(0.0, 0.02)
    return dispatch_model(model, device_map=dmap).eval()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_cap_gb * 2**30 / total))
    torch.manual_seed(0)
    model = build(args)
    vocab = model.config.vocab_size
    ids = torch.randint(
        4, vocab, (args.batch, args.prompt), device=args.device if args.mode != "device-map" else "cuda"
    )
    kw: dict[str, Any] = {"do_sample": False, "pad_token_id": 1}
    if args.mode == "offloaded":
        kw["cache_implementation"] = "offloaded"

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)  # warm-up
        sync()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        sync()
        prefill = time.perf_counter() - t0
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.gen, min_new_tokens=args.gen, **kw)
        sync()
        total = time.perf_counter() - t0
    assert out.shape[1] == args.prompt + args.gen
    return {
        "prefill_s": prefill,
        "total_s": total,
        "throughput_tokens_per_s": args.batch * args.gen / total,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if args.device == "cuda" else 0,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="opt-6.7b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--mode", choices=("dense", "offloaded", "device-map"), default="dense")
    ap.add_argument("--gpu-cap-gb", type=float, default=24.0, help="GiB this process may allocate on the GPU")
    ap.add_argument(
        "--weights-gb", type=float, help="device-map: GiB of weights kept on the GPU (default: half the cap)"
    )
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--layers", type=int, help="fewer layers (smoke tests)")
    ap.add_argument("--tiny", action="store_true", help="toy widths (smoke tests)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import torch
    import transformers

    rec: dict[str, Any] = {
        "system": f"hf-{args.mode}",
        "args": vars(args),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    try:
        rec.update(run(args))
    except torch.OutOfMemoryError as e:
        rec["oom"] = str(e).splitlines()[0]
    Path(args.out).write_text(json.dumps(rec, indent=1))
    print(json.dumps({k: v for k, v in rec.items() if k != "args"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
