"""Baselines: FlexGen's LP, vLLM's paging and preemption, and how they relate to dense-gpu."""

from __future__ import annotations

from typing import Any

import pytest

from alisa.sim.costs import CostModel
from alisa.sim.engine import Engine
from alisa.sim.errors import InputError
from alisa.sim.models import stored_kv_bytes_per_token_per_layer
from alisa.sim.policies import make_policy
from alisa.sim.policies.flexgen import PlacementProblem, solve_placement
from alisa.sim.runner import simulate

from .conftest import scenario


def _problem(**kw: Any) -> PlacementProblem:
    base: dict[str, Any] = dict(
        compute_s=0.001,
        compute_attn_cpu_s=0.0,
        weight_layer_bytes=1e8,
        kv_layer_bytes=1e8,
        h2d_s_per_byte=1e-10,
        cpu_attn_s_per_byte=1e-10,
        cpu_cache_compute=False,
        gpu_free_bytes=1.5e9,
        cpu_free_bytes=1e12,
        weights_total_bytes=1e9,
        kv_total_bytes=1e9,
    )
    base.update(kw)
    return PlacementProblem(**base)


def test_lp_hand_solved_case():
    # min max(1 ms, 10 ms (1 - wg) + 10 ms (1 - cg)) with wg + cg <= 1.5: optimum 5 ms on wg + cg = 1.5
    pl = solve_placement(_problem())
    assert pl.layer_time_s == pytest.approx(0.005, rel=1e-6)
    assert pl.wg + pl.cg == pytest.approx(1.5, abs=1e-6)
    # compute-bound: 100 ms whatever the placement, and everything fits on the GPU -> all there
    pl = solve_placement(_problem(compute_s=0.1, gpu_free_bytes=3e9))
    assert pl.layer_time_s == pytest.approx(0.1) and pl.wg == pytest.approx(1) and pl.cg == pytest.approx(1)


def test_lp_respects_memory_limits_and_reports_infeasible():
    p = _problem(gpu_free_bytes=0.7e9, cpu_free_bytes=1.4e9)
    pl = solve_placement(p)
    assert pl.wg * 1e9 + pl.cg * 1e9 <= 0.7e9 * (1 + 1e-6)
    assert (1 - pl.wg) * 1e9 + (1 - pl.cg) * 1e9 <= 1.4e9 * (1 + 1e-6)
    assert solve_placement(_problem(gpu_free_bytes=0.2e9, cpu_free_bytes=0.5e9)) is None


def test_flexgen_search_respects_memory_in_the_simulation():
    sc = scenario(
        policy={"name": "flexgen"},
        workload__batch_size=16,
        workload__prompt_len=512,
        workload__gen_len=32,
        model="opt-13b",
    )
    r, _ = simulate(sc)
    fp = r["policy_details"]["flexgen_policy"]
    assert not r["oom"] and (fp["weights_gpu_percent"] < 100 or fp["cache_gpu_percent"] < 100)
    assert r["peak_gpu_bytes"] <= sc.hardware.gpu_memory_bytes and r["peak_cpu_bytes"] <= sc.hardware.cpu_memory_bytes
    assert fp["gpu_batch_size"] * fp["num_gpu_batches"] == 16


def test_flexgen_all_on_gpu_matches_dense_gpu():
    """All on the GPU, the placement is dense-gpu's; as this backend runs it (runtime
    alisa) it takes dense-gpu's time, and FlexGen's own code takes longer by exactly its
    two extra passes over the attended KV (the copies before its bmm), every layer and step."""
    dense, _ = simulate(scenario(policy={"name": "dense-gpu"}))
    ours, _ = simulate(scenario(policy={"name": "flexgen", "gpu_batch_size": 8, "runtime": "alisa"}))
    fp = ours["policy_details"]["flexgen_policy"]
    assert fp["weights_gpu_percent"] == 100 and fp["cache_gpu_percent"] == 100
    assert ours["throughput_tokens_per_s"] == pytest.approx(dense["throughput_tokens_per_s"], rel=0.05)
    sc = scenario(policy={"name": "flexgen", "gpu_batch_size": 8})
    theirs, _ = simulate(sc)
    cost, wl, m = CostModel(sc.hardware), sc.workload, sc.model
    kv = stored_kv_bytes_per_token_per_layer(m, False)
    extra = sum(
        m.num_layers
        * (cost.attention_decode_s(3 * wl.batch_size * n * kv) - cost.attention_decode_s(wl.batch_size * n * kv))
        for n in range(wl.prompt_len + 1, wl.prompt_len + wl.gen_len)
    )
    assert theirs["decode_time_s"] - ours["decode_time_s"] == pytest.approx(extra, rel=1e-6)


def test_flexgen_infeasible_is_input_error():
    with pytest.raises(InputError) as ei:
        simulate(
            scenario(
                policy={"name": "flexgen"},
                model="opt-66b",
                workload__batch_size=64,
                workload__prompt_len=2048,
                hardware__cpu_memory_gb=140,
            )
        )
    assert ei.value.field == "policy" and "infeasible" in ei.value.reason


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_vllm_preempts_only_when_blocks_run_out_and_finishes_everything(mode):
    sc = scenario(
        policy={"name": "vllm", "gpu_kv_budget_gb": 0.6, "requests": 12, "gen_len_spread": 0.5, "preemption": mode},
        workload__batch_size=8,
        workload__gen_len=200,
    )
    pol = make_policy(sc)
    er = Engine(pol).run()
    assert er.oom is None
    assert pol.preemptions > 0  # the budget forces some
    assert all(need > free for need, free in pol.preempt_log)  # only when blocks ran out
    assert pol.peak_used_blocks <= pol.total_blocks
    assert sorted(pol.finished) == list(range(12))  # nobody is lost...
    assert all(pol.finished[r.rid] == r.target for r in pol.reqs)  # ...or cut short
    # each token counted once: a re-prefill after preemption emits the *next* token
    assert sum(s.tokens_out for s in er.steps) == sum(r.target for r in pol.reqs)
    if mode == "swap":
        assert pol.swap_outs > 0 and sum(s.h2d_bytes for s in er.steps) > 0


def test_vllm_without_pressure_never_preempts():
    sc = scenario(policy={"name": "vllm"}, workload__batch_size=4, workload__gen_len=50)
    pol = make_policy(sc)
    Engine(pol).run()
    assert pol.preemptions == 0 and len(pol.finished) == 4


@pytest.mark.parametrize("batch", [1, 4, 8])
def test_accelerate_never_faster_than_dense_gpu_when_both_fit(batch):
    d, _ = simulate(scenario(policy={"name": "dense-gpu"}, workload__batch_size=batch))
    a, _ = simulate(scenario(policy={"name": "accelerate"}, workload__batch_size=batch))
    z, _ = simulate(scenario(policy={"name": "zero-inference"}, workload__batch_size=batch))
    assert not d["oom"] and not a["oom"]
    assert a["throughput_tokens_per_s"] <= d["throughput_tokens_per_s"] * (1 + 1e-9)
    assert z["throughput_tokens_per_s"] < d["throughput_tokens_per_s"]


def test_h2o_keeps_its_budget_of_kv():
    r, er = simulate(scenario(policy={"name": "h2o", "kv_budget": 0.25}))
    d, _ = simulate(scenario(policy={"name": "dense-gpu"}))
    assert er.steps[-1].attended_tokens == -(-(128 + 63) // 4)
    assert r["throughput_tokens_per_s"] > d["throughput_tokens_per_s"]


def test_parameter_of_another_policy_is_rejected():
    with pytest.raises(InputError) as ei:
        scenario(policy={"name": "vllm", "kv_sparsity": 0.8})
    assert ei.value.field == "policy.kv_sparsity" and "not a parameter of policy 'vllm'" in ei.value.reason
