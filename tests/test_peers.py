"""The peers comparison's scripts, as far as a CPU goes: every planned run's scenario is
valid and simulated, FlexGen's policy follows the scenario's, and the HF driver measures a
tiny model (benchmarks/peers/)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / "peers"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, PEERS / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_plan_covers_every_point_and_system():
    rp = _load("run_peers")
    rows = rp.plan("h100-80gb-measured")
    assert len(rows) == 3 * len(rp.SYSTEMS)
    # where the KV does not fit, the GPU-only systems are out of memory and the offloading ones run
    by = {(r["point"], r["system"]): r for r in rows}
    for point in {r["point"] for r in rows}:
        assert by[(point, "dense-gpu")]["oom"] and by[(point, "hf-dense")]["oom"]
        for s in ("alisa", "flexgen-like", "flexgen-0.1.8", "hf-offloaded", "hf-device-map"):
            assert by[(point, s)]["simulated_tok_s"] > 0, (point, s)
    assert all(
        "--set=hardware.gpu_memory_gb=" in " ".join(r["command"]) or "--gpu-cap-gb" in r["command"] for r in rows
    )


def test_flexgen_peer_passes_the_scenarios_policy():
    fp = _load("flexgen_peer")
    p = subprocess.run(
        [
            sys.executable,
            str(PEERS / "flexgen_peer.py"),
            "scenarios/peers/offload.yaml",
            "--set=sweep=null",
            "--set=policy={name: flexgen, command_line: '--percent 100 0 40 60 100 0 --gpu-batch-size 16'}",
            "--set=hardware.gpu_memory_gb=24",
            "--dry-run",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-800:]
    pol = json.loads(p.stdout)["policy"]
    assert (pol["gpu_batch_size"], pol["num_gpu_batches"]) == (16, 2)
    assert (pol["w_gpu_percent"], pol["cache_gpu_percent"], pol["cache_cpu_percent"]) == (100, 40, 60)
    assert fp.flexgen_policy_args  # importable without flexgen


def test_hf_peer_measures_a_tiny_model_on_the_cpu(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "hf.json"
    p = subprocess.run(
        [
            sys.executable,
            str(PEERS / "hf_peer.py"),
            "--model",
            "opt-6.7b",
            "--layers",
            "1",
            "--tiny",
            "--batch",
            "2",
            "--prompt",
            "8",
            "--gen",
            "3",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-800:]
    rec = json.loads(out.read_text())
    assert rec["throughput_tokens_per_s"] > 0 and rec["total_s"] > 0 and rec["system"] == "hf-dense"
