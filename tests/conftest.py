from __future__ import annotations

import os

try:  # Triton kernels run in the interpreter where there is no GPU (CI); set before import
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from alisa.sim.catalog import model_config
from alisa.sim.hardware import profile_config
from alisa.sim.scenario import Scenario, build_scenario

BASE: dict[str, Any] = {
    "name": "t",
    "model": "opt-6.7b",
    "hardware": "v100-32gb",
    "workload": {"batch_size": 8, "prompt_len": 128, "gen_len": 64},
    "policy": {"name": "alisa", "kv_sparsity": 0.8, "local_fraction": 0.5, "recompute": True, "gpu_kv_budget_gb": 2},
    "seed": 0,
}


def scenario(**changes: Any) -> Scenario:
    """BASE with dotted-path changes, names resolved, validated like a file."""
    d = copy.deepcopy(BASE)
    d["model"] = model_config(d["model"])
    d["hardware"] = profile_config(d["hardware"])
    for k, v in changes.items():
        node = d
        parts = k.split("__")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = model_config(v) if k == "model" else profile_config(v) if k == "hardware" else v
    return build_scenario(d, "<test>")


@pytest.fixture
def write_yaml(tmp_path: Path):
    def _w(data: Any, name: str = "s.yaml") -> Path:
        p = tmp_path / name
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return p

    return _w
