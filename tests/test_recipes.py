"""The three recipes of docs/architecture.md, exercised: a policy defined here runs through
both engines and the plan checks; a profile written here and an inline model run."""

from __future__ import annotations

import yaml

from alisa.sim import policies
from alisa.sim.engine import Engine
from alisa.sim.fast_engine import FastEngine
from alisa.sim.hardware import GB, profile_config
from alisa.sim.memory import MemoryLayout, plan_memory
from alisa.sim.models import weight_bytes
from alisa.sim.plan import LayerPlan, OutOfMemory, StepPlan, check_plan
from alisa.sim.policies.base import Policy
from alisa.sim.runner import simulate
from alisa.sim.scenario import load_scenario

from .conftest import scenario


class HalfOnHost(Policy):
    """A toy: the older half of every sequence's KV lives on the host and is fetched
    whole each step (contiguous, no gather); the newer half stays on the GPU."""

    name = "half-on-host"

    def plan_layout(self) -> MemoryLayout:
        hw, wl = self.sc.hardware, self.sc.workload
        return plan_memory(
            self.model,
            self.batch,
            wl.prompt_len,
            hw.gpu_memory_bytes,
            hw.cpu_memory_bytes,
            hw.gpu_reserved_gb * GB,
            None,
            0.0,
            allow_weight_offload=False,
        )

    def _step(self, step: int, n: int, new: int) -> StepPlan:
        host = n // 2
        layers = tuple(
            LayerPlan(
                new_tokens=new,
                attended_tokens=n,
                prefill=step < 0,
                h2d_kv_tokens=0 if step < 0 else host,
                d2h_kv_tokens=host if step < 0 else 0,
                contiguous_fetch=True,
            )
            for _ in range(self.model.num_layers)
        )
        return StepPlan(step, "prefill" if step < 0 else "II", n, self.batch, layers, n - host, host)

    def prefill(self) -> StepPlan | OutOfMemory:
        p = self.sc.workload.prompt_len
        return self._step(-1, p, p)

    def decode(self, step: int) -> StepPlan | OutOfMemory:
        return self._step(step, self.sc.workload.prompt_len + step + 1, 1)


def test_a_new_policy_runs_through_both_engines_and_the_plan_checks(monkeypatch):
    monkeypatch.setitem(policies.REGISTRY, "dense-gpu", HalfOnHost)  # any config name carries it here
    sc = scenario(policy={"name": "dense-gpu"}, workload__gen_len=24)
    pol = policies.make_policy(sc)
    assert isinstance(pol, HalfOnHost)
    plans = list(pol.plans())
    assert all(check_plan(p, sc.model.num_layers) == [] for p in plans if isinstance(p, StepPlan))
    fast = FastEngine(policies.make_policy(sc)).run()
    exact = Engine(policies.make_policy(sc)).run()
    assert fast.total_time_s == exact.total_time_s > 0
    # what the toy moves: half the context's KV up every decode step, the prompt's half down once
    kv = pol.coster.kv_bytes * sc.workload.batch_size * sc.model.num_layers
    ups = sum((sc.workload.prompt_len + s + 1) // 2 for s in range(sc.workload.gen_len - 1))
    assert sum(r.h2d_bytes for r in fast.steps) == ups * kv
    assert sum(r.d2h_bytes for r in fast.steps) == (sc.workload.prompt_len // 2) * kv


def test_check_plan_names_what_is_wrong():
    bad = StepPlan(3, "I", 10, 4, (LayerPlan(attended_tokens=12, h2d_kv_tokens=2),) * 2, 10, 0)
    why = check_plan(bad, 2)
    assert any("attends 12 of 10" in w for w in why) and any("phase I moves KV" in w for w in why)
    assert check_plan(bad, 3)[0].startswith("step 3: 2 layer plans for a 3-layer model")


def test_every_bundled_policy_makes_plans_that_pass_the_checks():
    for name in ("alisa", "dense-gpu", "flexgen", "vllm", "accelerate", "zero-inference", "h2o"):
        sc = scenario(policy={"name": name}, workload__gen_len=32)
        block = getattr(sc.policy, "block_size", 1)  # vLLM's paged cache holds whole blocks
        for p in policies.make_policy(sc).plans():
            if isinstance(p, OutOfMemory):
                break
            why = check_plan(p, sc.model.num_layers, block)
            assert why == [], (name, why)


def test_a_new_hardware_profile_by_path(tmp_path, write_yaml):
    prof = profile_config("v100-32gb") | {
        "name": "my-gpu",
        "gpu_memory_gb": 48,
        "hbm_gbps": 1200,
        "provenance": "a test's made-up GPU",
    }
    path = tmp_path / "my-gpu.yaml"
    path.write_text(yaml.safe_dump(prof))
    sc = load_scenario(
        write_yaml(
            {
                "name": "p",
                "model": "opt-6.7b",
                "hardware": str(path),
                "workload": {"batch_size": 4, "prompt_len": 64, "gen_len": 8},
                "policy": {"name": "dense-gpu"},
            }
        )
    )
    r, _ = simulate(sc)
    assert r["scenario"]["hardware"] == "my-gpu" and r["throughput_tokens_per_s"] > 0


def test_a_new_model_inline(write_yaml):
    model = {
        "name": "tiny-opt",
        "family": "opt",
        "num_layers": 4,
        "hidden_size": 512,
        "num_heads": 8,
        "num_kv_heads": 8,
        "head_dim": 64,
        "ffn_dim": 2048,
        "vocab_size": 1000,
        "activation": "relu",
        "norm": "layernorm",
        "max_positions": 2048,
        "tie_embeddings": True,
    }
    sc = load_scenario(
        write_yaml(
            {
                "name": "m",
                "model": model,
                "hardware": "v100-32gb",
                "workload": {"batch_size": 2, "prompt_len": 32, "gen_len": 4},
                "policy": {"name": "dense-gpu"},
            }
        )
    )
    # by hand: per layer 4h^2 + 4h (attention) + 2 h f + f + h (MLP) + 4h (two layer norms);
    # embeddings v h + (positions + 2) h, final norm 2h; fp16
    h, f, v, layers = 512, 2048, 1000, 4
    per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
    params = layers * per_layer + v * h + (2048 + 2) * h + 2 * h
    assert weight_bytes(sc.model) == 2 * params
    r, _ = simulate(sc)
    assert r["throughput_tokens_per_s"] > 0
