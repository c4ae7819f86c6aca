"""Scheduling policies: each turns a scenario into StepPlans."""

from __future__ import annotations

from ..costs import CostModel
from ..scenario import Scenario
from ..step_cost import StepCoster
from .alisa import AlisaPolicy
from .base import Policy
from .dense_gpu import DenseGpuPolicy
from .flexgen import FlexGenPolicy
from .simple_baselines import AcceleratePolicy, H2OPolicy, ZeroInferencePolicy
from .vllm import VllmPolicy

REGISTRY: dict[str, type[Policy]] = {
    "alisa": AlisaPolicy,
    "dense-gpu": DenseGpuPolicy,
    "flexgen": FlexGenPolicy,
    "vllm": VllmPolicy,
    "accelerate": AcceleratePolicy,
    "zero-inference": ZeroInferencePolicy,
    "h2o": H2OPolicy,
}


def make_policy(scenario: Scenario, cost: CostModel | None = None) -> Policy:
    cost = cost or CostModel(scenario.hardware)
    swa = scenario.policy.name == "alisa" and scenario.policy.kv_sparsity > 0
    # the real backend's cache layout for this policy (what its decode layers run)
    cache = "prefix" if scenario.policy.name == "flexgen" else "swa" if swa else "slots"
    device_gather = scenario.policy.name == "alisa" and scenario.policy.gather == "device"
    coster = StepCoster(
        scenario.model,
        scenario.workload.batch_size,
        cost,
        scenario.policy.int8_kv,
        swa=swa,
        cache=cache,
        device_gather=device_gather,
    )
    policy = REGISTRY[scenario.policy.name](scenario, coster)
    if isinstance(policy, AlisaPolicy) and swa:
        coster.importance_history = policy.importance_history()
    if isinstance(policy, AlisaPolicy) and policy.spills:
        coster.use_cache_layout("spill")  # its layers also write through and land fetched rows
        coster.selection = policy.selection_shape()
    return policy
