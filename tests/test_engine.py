"""The engine and the ALISA scheduler: properties, hand-computed cases, determinism."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from alisa.sim.costs import CostModel
from alisa.sim.engine import Engine
from alisa.sim.fast_engine import FastEngine
from alisa.sim.hardware import HardwareProfile, OpTable
from alisa.sim.memory import MemoryLayout
from alisa.sim.models import kv_bytes_per_token
from alisa.sim.plan import LayerPlan, StepPlan
from alisa.sim.runner import simulate
from alisa.sim.step_cost import LayerTimes

from .conftest import scenario

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_tokens_generated_is_batch_times_gen_len():
    r, _ = simulate(scenario())
    assert not r["oom"]
    assert r["tokens_generated"] == 8 * 64
    assert r["throughput_tokens_per_s"] == pytest.approx(r["tokens_generated"] / r["total_time_s"])
    assert r["total_time_s"] >= r["prefill_time_s"] + r["decode_time_s"] - 1e-12


def test_same_seed_same_result():
    a, _ = simulate(scenario(policy__gpu_kv_budget_gb=0.4))
    b, _ = simulate(scenario(policy__gpu_kv_budget_gb=0.4))
    for r in (a, b):
        r.pop("sim_wall_s")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["phases"]["II"]["steps"] > 0  # the case exercises the stochastic rounding


def test_large_budget_stays_in_phase_one():
    r, _ = simulate(scenario(policy__gpu_kv_budget_gb=4))
    assert r["phases"]["I"]["steps"] == 63 and r["phases"]["II"]["steps"] == r["phases"]["III"]["steps"] == 0
    assert r["h2d_bytes"] == 0 and r["d2h_bytes"] == 0 and r["recomputed_tokens"] == 0


def test_small_budget_reaches_all_three_phases():
    r, _ = simulate(
        scenario(
            workload__gen_len=512,
            policy__gpu_kv_budget_gb=1.0,
            policy__selection_churn=0.4,
            hardware__pcie_h2d_gbps=2.0,
        )
    )
    assert all(r["phases"][p]["steps"] > 0 for p in ("I", "II", "III")), r["phases"]
    assert r["recomputed_tokens"] > 0


@FAST
@given(
    batch=st.integers(1, 16),
    budget=st.floats(0.15, 3.0),
    s=st.floats(0.0, 0.95),
    churn=st.floats(0.0, 1.0),
    int8=st.booleans(),
)
def test_memory_within_capacity_at_every_event(batch, budget, s, churn, int8):
    sc = scenario(
        workload__batch_size=batch,
        policy__gpu_kv_budget_gb=budget,
        policy__kv_sparsity=s,
        policy__selection_churn=churn,
        policy__int8_kv=int8,
        hardware__cpu_memory_gb=3,
    )
    r, er = simulate(sc)
    for _, gpu, cpu in er.memory_log:
        assert gpu <= sc.hardware.gpu_memory_bytes
        assert cpu <= sc.hardware.cpu_memory_bytes
    if r["oom"]:
        assert r["oom_reason"] and r["throughput_tokens_per_s"] == 0.0


@FAST
@given(
    batch=st.integers(1, 16),
    budget=st.floats(0.2, 2.0),
    s=st.floats(0.5, 0.95),
    churn=st.floats(0.05, 1.0),
    recompute=st.booleans(),
)
def test_doubling_pcie_never_lowers_alisa_throughput(batch, budget, s, churn, recompute):
    base = dict(
        workload__batch_size=batch,
        policy__gpu_kv_budget_gb=budget,
        policy__kv_sparsity=s,
        policy__selection_churn=churn,
        policy__recompute=recompute,
    )
    slow, _ = simulate(scenario(**base))
    fast, _ = simulate(scenario(**base, hardware__pcie_h2d_gbps=2 * 15.75, hardware__pcie_d2h_gbps=2 * 15.75))
    if slow["oom"]:
        return
    assert fast["throughput_tokens_per_s"] >= slow["throughput_tokens_per_s"] * (1 - 1e-9)


@FAST
@given(
    batch=st.integers(1, 16),
    budget=st.floats(0.2, 2.0),
    s=st.floats(0.01, 0.9),
    ds=st.floats(0.01, 0.09),
    churn=st.floats(0.0, 1.0),
)
def test_more_sparsity_never_moves_more_bytes(batch, budget, s, ds, churn):
    # s > 0 on both sides: going from dense (s = 0) to SWA adds the importance scores to
    # the GPU budget, which can shrink the cache; among SWA settings they only shrink.
    # Churn at most s: above the share of unselected tokens (2s / (1 - s) of the global
    # part with half the budget local) the miss model caps new selections at that share,
    # and more sparsity, leaving more tokens unselected, rightly allows more new ones
    # (hypothesis found batch 16, 1.56 GB, s 0.059 -> 0.090, churn 1.0: +1.2% bytes)
    assume(churn <= s)
    base = dict(
        workload__batch_size=batch,
        policy__gpu_kv_budget_gb=budget,
        policy__selection_churn=churn,
        policy__recompute=False,
    )
    lo, _ = simulate(scenario(**base, policy__kv_sparsity=s))
    hi, _ = simulate(scenario(**base, policy__kv_sparsity=s + ds))
    if lo["oom"] or hi["oom"]:
        return
    assert hi["h2d_bytes"] + hi["d2h_bytes"] <= lo["h2d_bytes"] + lo["d2h_bytes"]


def test_dense_gpu_memory_matches_hand_formula():
    sc = scenario(policy={"name": "dense-gpu"})
    r, er = simulate(sc)
    lay_gpu_static = er.memory_log[0][1] - 8 * 128 * kv_bytes_per_token(sc.model)  # after prefill: 128 tokens
    final_tokens = 128 + 63
    assert r["peak_gpu_bytes"] == pytest.approx(lay_gpu_static + 8 * final_tokens * kv_bytes_per_token(sc.model))


def test_dense_gpu_oom_is_reported_not_raised():
    r, _ = simulate(scenario(policy={"name": "dense-gpu"}, workload__batch_size=256, workload__prompt_len=2048))
    assert r["oom"] and r["oom_pool"] == "gpu" and "KV cache" in r["oom_reason"]
    assert r["throughput_tokens_per_s"] == 0.0


# -- the engine's pipeline against a hand-computed schedule -------------------------


class _FixedCoster:
    kv_bytes = 1
    hidden_bytes = 1

    def __init__(
        self,
        times: dict[int, LayerTimes],
        head_s: float,
        step_s: float = 0.0,
        round_trip_s: float = 0.0,
        select_s: float = 0.0,
        flush_s: float = 0.0,
    ) -> None:
        self.times, self.head_s = times, head_s
        self.step_s, self.round_trip_s, self.select_s, self.flush = step_s, round_trip_s, select_s, flush_s

    def flush_s(self, times: list[LayerTimes], prefill: bool = False) -> float:
        return 0.0 if prefill else self.flush

    def step_host_s(self) -> float:
        return self.step_s

    def round_trip_host_s(self) -> float:
        return self.round_trip_s

    def selection_s(self, round_trip: bool) -> float:
        return self.select_s if round_trip else 0.0

    def layer_times(self, lp: LayerPlan) -> LayerTimes:
        return self.times[lp.attended_tokens]

    def lm_head_s(self, m: int) -> float:
        return self.head_s


@pytest.fixture(params=[Engine, FastEngine], ids=["exact", "fast"])
def engine_cls(request):
    """The hand-computed schedules hold for the full event model and its closed form alike."""
    return request.param


class _OnePlanPolicy:
    def __init__(self, plans: list[StepPlan], coster: _FixedCoster) -> None:
        self._plans, self.coster, self.batch = plans, coster, 1
        self.model = SimpleNamespace(num_layers=2)
        self.sc = SimpleNamespace(workload=SimpleNamespace(gen_len=len(plans)))
        self.layout = MemoryLayout(1e12, 1e12, 0, 0, 0, 0, 0, 0)

    def static_check(self):
        return None

    def plans(self):
        yield from self._plans

    def summary(self):
        return {}


def test_engine_pipeline_matches_hand_schedule(engine_cls):
    # layer A: gather 1, h2d 2, compute 3, d2h 4 ; layer B: gather 1, h2d 2, compute 1, d2h 1
    coster = _FixedCoster({1: LayerTimes(1, 2, 3, 4, 0, 0), 2: LayerTimes(1, 2, 1, 1, 0, 0)}, head_s=0.5)
    step = StepPlan(0, "II", 1, 1, (LayerPlan(attended_tokens=1), LayerPlan(attended_tokens=2)), 0, 0)
    er = engine_cls(_OnePlanPolicy([step, step], coster)).run()
    # step 1: gather A [0,1] B [1,2]; h2d A [1,3] B [3,5]; compute A [3,6] B [6,7]; head [7,7.5]
    # d2h A [6,10] B [10,11] runs on past the step's end.
    assert er.steps[0].end_s == pytest.approx(7.5)
    # step 2 starts at 7.5 and ends at 15.0; its d2h waits for step 1's d2h (ends 11):
    # d2h A [max(11, 13.5), 17.5], B [17.5, 18.5]; the run ends with the last write-back.
    assert er.steps[1].end_s == pytest.approx(15.0)
    assert er.total_time_s == pytest.approx(18.5)
    lanes = {e[0] for e in er.events}
    assert lanes == {"CPU", "H2D", "GPU compute", "D2H"}


@pytest.mark.parametrize(
    "compute, host, round_trip, select, ends",
    [
        # host-bound: each layer ends when the host has issued it; the host runs on from 4.5
        (1.0, 2.0, False, 0.25, (5.0, 9.5)),
        # the same with a round trip: the host's step time (0.5 s, from 5.5) overlaps the GPU's
        # head; then it waits for the GPU (free at 6.0) and takes 1.0 s before issuing
        (1.0, 2.0, True, 0.0, (6.0, 11.5)),
        # ... and first for the step's selection on the GPU (0.25 s): 0.25 later each step
        (1.0, 2.0, True, 0.25, (6.25, 12.0)),
        # GPU-bound: the host issues ahead and its time is hidden after the first layer
        (3.0, 1.0, False, 0.25, (7.0, 13.5)),
    ],
)
def test_engine_host_issue_by_hand(engine_cls, compute, host, round_trip, select, ends):
    coster = _FixedCoster(
        {1: LayerTimes(0, 0, compute, 0, 0, 0, host)}, head_s=0.5, step_s=0.5, round_trip_s=1.0, select_s=select
    )
    step = StepPlan(0, "II", 1, 1, (LayerPlan(attended_tokens=1),) * 2, 0, 0, host_round_trip=round_trip)
    er = engine_cls(_OnePlanPolicy([step, step], coster)).run()
    assert [r.end_s for r in er.steps] == pytest.approx(list(ends))
    assert "Host" in {e[0] for e in er.events}


@pytest.mark.parametrize(
    "flush, ends",
    [
        # the host's flush (1.0) outlasts the GPU's last layer and head (the host is free at
        # 5.75 + 1.0 = 6.75, the GPU at 6.25): the next selection starts at 6.75, not 6.25
        (1.0, (6.25, 13.0)),
        # a flush done before the GPU is (5.75 + 0.25 < 6.25) costs nothing, and the step's
        # own host time (0.5) overlaps the GPU's tail: the selection starts at 6.0 + 0.5 = 6.5
        (0.25, (6.25, 12.25)),
    ],
)
def test_engine_flush_delays_next_selection(engine_cls, flush, ends):
    coster = _FixedCoster(
        {1: LayerTimes(0, 0, 1.0, 0, 0, 0, 2.0)}, head_s=0.5, step_s=0.5, round_trip_s=1.0, select_s=0.25, flush_s=flush
    )
    step = StepPlan(0, "II", 1, 1, (LayerPlan(attended_tokens=1),) * 2, 0, 0, host_round_trip=True)
    er = engine_cls(_OnePlanPolicy([step, step], coster)).run()
    assert [r.end_s for r in er.steps] == pytest.approx(list(ends))
    assert any(e[1] == "flush" for e in er.events)


def test_engine_host_waits_for_gathered_rows(engine_cls):
    # layer A: gather 1, h2d 2, compute 3, host 4; layer B: gather 1, h2d 2, compute 1, host 4.
    # host issues A over [1, 5] (after A's gather), B over [5, 9]; GPU A [3, 6], B [6, 9]; head [9, 9.5]
    coster = _FixedCoster({1: LayerTimes(1, 2, 3, 0, 0, 0, 4), 2: LayerTimes(1, 2, 1, 0, 0, 0, 4)}, head_s=0.5)
    step = StepPlan(0, "II", 1, 1, (LayerPlan(attended_tokens=1), LayerPlan(attended_tokens=2)), 0, 0)
    er = engine_cls(_OnePlanPolicy([step], coster)).run()
    assert er.steps[0].end_s == pytest.approx(9.5)
    gpu = [(e[2], e[3]) for e in er.events if e[0] == "GPU compute" and e[1].startswith("L")]
    assert gpu == [pytest.approx((3.0, 3.0)), pytest.approx((6.0, 3.0))]


def test_engine_fetch_staging_is_double_buffered(engine_cls):
    # (h2d, compute) per layer; no gathers except where noted. A layer's copy waits until the
    # GPU has consumed the rows of the layer two back (they share a landing buffer):
    # h2d L0 [0,1] L1 [1,2] L2 [2,3] L3 waits for L1's compute (ends 8) -> [8,14];
    # compute L0 [1,2] L1 [2,8] L2 [8,9] L3 [14,15]; head [15, 15.5]. Without the
    # staging limit L3 would copy over [3,9] and the step would end at 10.5.
    times = {
        1: LayerTimes(0, 1, 1, 0, 0, 0),
        2: LayerTimes(0, 1, 6, 0, 0, 0),
        3: LayerTimes(0, 1, 1, 0, 0, 0),
        4: LayerTimes(0, 6, 1, 0, 0, 0),
    }
    step = StepPlan(0, "II", 1, 1, tuple(LayerPlan(attended_tokens=i) for i in (1, 2, 3, 4)), 0, 0)
    er = engine_cls(_OnePlanPolicy([step], _FixedCoster(times, head_s=0.5))).run()
    assert er.steps[0].end_s == pytest.approx(15.5)
    # the pinned side: with gathers of 1 and a long first copy, L2's gather waits for L0's copy
    times = {
        1: LayerTimes(1, 5, 1, 0, 0, 0),
        2: LayerTimes(1, 1, 1, 0, 0, 0),
        3: LayerTimes(1, 1, 1, 0, 0, 0),
        4: LayerTimes(1, 1, 1, 0, 0, 0),
    }
    er = engine_cls(_OnePlanPolicy([step], _FixedCoster(times, head_s=0.5))).run()
    gathers = sorted((e[2], e[1]) for e in er.events if e[0] == "CPU")
    assert [g[0] for g in gathers] == pytest.approx([0.0, 1.0, 6.0, 7.0])  # L2 after L0's copy [1, 6]
    # a host prefix fetched whole (FlexGen-like) has no staging: L3 copies right after L2
    flex = StepPlan(
        0, "II", 1, 1, tuple(LayerPlan(attended_tokens=i, contiguous_fetch=True) for i in (1, 2, 3, 4)), 0, 0
    )
    times = {
        1: LayerTimes(0, 1, 1, 0, 0, 0),
        2: LayerTimes(0, 1, 6, 0, 0, 0),
        3: LayerTimes(0, 1, 1, 0, 0, 0),
        4: LayerTimes(0, 6, 1, 0, 0, 0),
    }
    er = engine_cls(_OnePlanPolicy([flex], _FixedCoster(times, head_s=0.5))).run()
    assert er.steps[0].end_s == pytest.approx(10.5)


class _InlineCoster(_FixedCoster):
    inline_fetch = True  # the issuing thread gathers (the real backend's inline fetch)


def test_engine_inline_host_stays_two_layers_ahead_of_the_gpu(engine_cls):
    # four layers of gather 0.1, h2d 0.1, compute 3, host issue 0.1, one thread: gather L0
    # [0, 0.1], issue L0 [0.1, 0.2], gather L1 [0.2, 0.3] and L2 [0.3, 0.4], issue L1
    # [0.4, 0.5], gather L3 [0.5, 0.6] (its pinned buffer's copy, L1's, ended at 0.4), issue
    # L2 [0.6, 0.7]; then the throttle: the GPU must finish L0 ([0.2, 3.2]) before the thread
    # goes on, so L3 is issued at 3.2, not 0.7. The GPU sets the step's end either way.
    t = LayerTimes(0.1, 0.1, 3.0, 0, 0, 0, 0.1)
    step = StepPlan(0, "II", 1, 1, (LayerPlan(attended_tokens=1),) * 4, 0, 0)
    er = engine_cls(_OnePlanPolicy([step], _InlineCoster({1: t}, head_s=0.5))).run()
    issue = {e[1]: e[2] for e in er.events if e[0] == "Host" and e[1].startswith("issue")}
    assert [issue[f"issue L{l}"] for l in range(4)] == pytest.approx([0.1, 0.4, 0.6, 3.2])
    assert er.steps[0].end_s == pytest.approx(12.7)


# -- cost model against hand-computed values -------------------------------------------


def _hw(**kw) -> HardwareProfile:
    base = dict(
        name="h",
        source="datasheet",
        provenance="test",
        gpu_memory_gb=80,
        hbm_gbps=1000,
        fp16_tflops=100,
        pcie_h2d_gbps=10,
        pcie_d2h_gbps=20,
        pcie_latency_us=10,
        cpu_memory_gb=100,
        cpu_gather_gbps=5,
        kernel_launch_us=5,
        gemm_efficiency=1,
        hbm_efficiency=1,
        pcie_efficiency=1,
    )
    base.update(kw)
    return HardwareProfile(**base)


def test_cost_model_hand_values():
    c = CostModel(_hw())
    # 1 GB over 10 GB/s pinned + one 10 us latency
    assert c.h2d_s(1e9) == pytest.approx(0.1 + 10e-6)
    assert c.d2h_s(1e9, chunks=4) == pytest.approx(0.05 + 40e-6)
    # pageable at 0.4 of pinned
    assert c.h2d_s(1e9, pinned=False) == pytest.approx(0.25 + 10e-6)
    # GEMV-like GEMM is bandwidth-bound: (4096 + 4096*4096 + 4096) * 2 B / 1e12 B/s + 5 us
    assert c.gemm_s(1, 4096, 4096) == pytest.approx((2 * 4096 + 4096**2) * 2 / 1e12 + 5e-6)
    # big GEMM is compute-bound: 2 * 8192^3 / 1e14
    assert c.gemm_s(8192, 8192, 8192) == pytest.approx(2 * 8192**3 / 1e14 + 5e-6)


def test_measured_table_overrides_and_interpolates():
    t = OpTable(size=[1e3, 1e6, 1e9], seconds=[1e-5, 1e-4, 0.1])
    c = CostModel(_hw(tables={"h2d_pinned": t}))
    assert c.h2d_s(1e6) == pytest.approx(1e-4)
    # linear in size between measured points: a third of the way from 1e6 to 1e9 bytes
    x = 1e6 + (1e9 - 1e6) / 3
    assert c.h2d_s(x) == pytest.approx(1e-4 + (0.1 - 1e-4) / 3)
    # below the grid: the smallest measured time
    assert c.h2d_s(10.0) == pytest.approx(1e-5)
    # beyond the grid: the last segment's incremental rate
    assert c.h2d_s(2e9) == pytest.approx(0.1 + (0.1 - 1e-4) / (1e9 - 1e6) * 1e9)
    assert c.d2h_s(1e6) == pytest.approx(10e-6 + 1e6 / 20e9)  # no table for d2h: analytic


def test_linear_interpolation_is_exact_on_a_latency_bandwidth_table():
    """Each table is latency + bytes / bandwidth piecewise: between points 4x apart a
    linear chord reproduces it exactly, where a log-log one over-states it."""
    lat, bw = 20e-6, 3e12
    size = [4.0**i * 1e6 for i in range(6)]
    t = OpTable(size=size, seconds=[lat + s / bw for s in size])
    c = CostModel(_hw(tables={"attention_decode": t}))
    for s in (2e6, 5e7, 3e8, 1.5e9):
        assert c.attention_decode_s(s) == pytest.approx(lat + s / bw, rel=1e-9)


def test_contiguous_attention_reads_its_own_table():
    """A whole cache read in order (dense) is timed by the contiguous table where the
    profile has one; a selection, and any read on a profile without it, by the other."""
    sel = OpTable(size=[1e6, 1e9], seconds=[1e-5, 4e-4])
    whole = OpTable(size=[1e6, 1e9], seconds=[1e-5, 3e-4])
    both = CostModel(_hw(tables={"attention_decode": sel, "attention_decode_contiguous": whole}))
    assert both.attention_decode_s(1e9) == pytest.approx(4e-4)
    assert both.attention_decode_s(1e9, contiguous=True) == pytest.approx(3e-4)
    older = CostModel(_hw(tables={"attention_decode": sel}))
    assert older.attention_decode_s(1e9, contiguous=True) == pytest.approx(4e-4)


# -- selection traces drive Phase II traffic -----------------------------------------------


def _trace(tmp_path, churn: float, layers: int = 3, steps: int = 20):
    import numpy as np

    from alisa.sim.selection import SelectionTrace, write_trace

    sel = np.full((steps, layers), 100)
    t = SelectionTrace(np.arange(100, 100 + steps), np.full(steps, 20), sel, (sel * churn).astype(int))
    p = tmp_path / f"t{churn}.npz"
    write_trace(p, t)
    return str(p)


def test_trace_churn_drives_traffic(tmp_path):
    base = dict(policy__gpu_kv_budget_gb=0.5, policy__recompute=False)
    lo, _ = simulate(scenario(**base, policy__selection_trace=_trace(tmp_path, 0.05)))
    hi, _ = simulate(scenario(**base, policy__selection_trace=_trace(tmp_path, 0.6)))
    const, _ = simulate(scenario(**base, policy__selection_churn=0.6))
    assert lo["policy_details"]["churn_source"] == "trace"
    assert hi["h2d_bytes"] > lo["h2d_bytes"]
    assert hi["h2d_bytes"] == pytest.approx(const["h2d_bytes"], rel=0.02)  # a flat trace = that constant


def test_bad_trace_is_input_error(tmp_path):
    from alisa.sim.errors import InputError

    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError) as ei:
        simulate(scenario(policy__selection_trace=str(bad)))
    assert "not a selection trace" in ei.value.reason


# -- the device gather (policy.gather: device) -------------------------------------------


def test_device_gather_layer_times_by_hand():
    """No CPU gather; one kernel a layer at the measured zero-copy rate; the compute beside
    it slower by the measured share for as long as they overlap; its issue on the host."""
    from alisa.sim.catalog import get_model
    from alisa.sim.models import hidden_bytes_per_token_per_layer, stored_kv_bytes_per_token_per_layer
    from alisa.sim.step_cost import StepCoster

    m = get_model("llama-7b")
    zc = dict(fixed_us=10.0, gbps=40.0, compute_slowdown=0.25, gather_slowdown=0.5, issue_us=15.0)
    hw = _hw(zero_copy=zc, host={"layer_us": 30.0, "spill_layer_us": 5.0, "recompute_us": 7.0})
    host = StepCoster(m, 8, CostModel(hw), swa=True, cache="spill")
    dev = StepCoster(m, 8, CostModel(hw), swa=True, cache="spill", device_gather=True)
    lp = LayerPlan(attended_tokens=300, h2d_kv_tokens=20, recompute_tokens=10, d2h_kv_tokens=1, d2h_hidden_tokens=1)
    th, td = host.layer_times(lp), dev.layer_times(lp)
    kv = 8 * 20 * stored_kv_bytes_per_token_per_layer(m, False)
    x = 8 * 10 * hidden_bytes_per_token_per_layer(m)
    h2d = 10e-6 + kv / 40e9 + x / 40e9  # one kernel for the layer's parts
    assert td.gather_s == 0.0 and th.gather_s > 0
    overlap = min(th.compute_s, h2d)  # each slows the other while both run
    assert td.h2d_s == pytest.approx(h2d + 0.5 * overlap)
    assert td.compute_s == pytest.approx(th.compute_s + 0.25 * overlap)
    assert td.host_s == pytest.approx(th.host_s + 15e-6)
    assert td.h2d_bytes == th.h2d_bytes == kv + x
    # unmeasured: the pinned copy's rate, no slowdown
    plain = StepCoster(m, 8, CostModel(_hw()), swa=True, cache="spill", device_gather=True)
    tp = plain.layer_times(lp)
    assert tp.h2d_s == pytest.approx(CostModel(_hw()).h2d_s(kv + x))
    # INT8 KV: a scale row is read beside its KV row, so the KV rows (8 KiB values and 128 B
    # of scales for LLaMA-7B) read at the 8 KiB rate; the host gather takes them as two parts
    hw8 = _hw(
        zero_copy={**zc, "row_gbps": {8192: 30.0, 16384: 45.0}, "gather_slowdown": 0.0},
        host={"layer_us": 30.0, "spill_layer_us": 5.0, "recompute_us": 7.0, "fetch_part_us": 4.0},
    )
    c8 = {"swa": True, "cache": "spill", "int8_kv": True}
    t8 = StepCoster(m, 8, CostModel(hw8), device_gather=True, **c8).layer_times(lp)
    assert t8.h2d_s == pytest.approx(10e-6 + 8 * 20 * (8192 + 128) / 30e9 + x / 30e9)
    assert t8.h2d_bytes == 8 * 20 * (8192 + 128) + x
    h8 = StepCoster(m, 8, CostModel(hw8), **c8)
    t8h = h8.layer_times(lp)
    parts = (8 * 20 * 8192, 8 * 20 * 128, x)
    assert t8h.gather_s == pytest.approx(
        sum(h8.gather_part_s(n) for n in parts) + 1e-6 * (hw8.host.at("fetch_layer_us", 8) + 2 * 4.0)
    )


def test_device_gather_plans_skip_the_round_trip_but_not_the_selection():
    """The host never waits for the selection; the GPU still runs it at each decode step's
    start, and the same plans move the same bytes as with the host gather."""
    from alisa.sim.policies import make_policy

    runs, trips = {}, {}
    for gather in ("host", "device"):
        sc = scenario(
            hardware="h100-80gb-measured",
            workload__batch_size=8,
            workload__prompt_len=512,
            workload__gen_len=16,
            model="llama-7b",
            policy={
                "name": "alisa",
                "kv_sparsity": 0.8,
                "gpu_kv_budget_tokens": 320,
                "recompute_ratio": 0.0,
                "selection_churn": 0.6,
                "gather": gather,
            },
        )
        runs[gather] = simulate(sc)[1]
        trips[gather] = {p.host_round_trip for p in make_policy(sc).plans() if p.phase != "prefill"}
    host, dev = runs["host"], runs["device"]
    assert trips == {"host": {True}, "device": {False}}
    assert [r.h2d_bytes for r in host.steps] == [r.h2d_bytes for r in dev.steps]
    assert not any(e[0] == "CPU" for e in dev.events)  # nothing gathered on the CPU
    selects = [e for e in dev.events if e[0] == "GPU compute" and e[1] == "select"]
    assert len(selects) == len(dev.steps) - 1  # every decode step, not the prefill
    for e in selects:  # before the step's first layer
        first = min(f[2] for f in dev.events if f[0] == "GPU compute" and f[1] == "L0" and f[4] == e[4])
        assert e[2] + e[3] <= first + 1e-12


def test_dense_runs_time_their_attention_by_the_contiguous_table():
    """dense-gpu's layers read whole caches (attention_contiguous), ALISA's a selection:
    a profile whose contiguous reads are faster speeds up the first, not the second."""
    import copy

    from alisa.sim.catalog import model_config
    from alisa.sim.hardware import profile_config
    from alisa.sim.scenario import build_scenario

    base = profile_config("h100-80gb-measured")
    sel = base["tables"]["attention_decode"]
    fast = copy.deepcopy(base)
    fast["tables"]["attention_decode_contiguous"] = {"size": sel["size"], "seconds": [t / 2 for t in sel["seconds"]]}

    def run(hw: dict, policy: dict) -> float:
        d = {
            "name": "t",
            "model": model_config("llama-7b"),
            "hardware": copy.deepcopy(hw),
            "workload": {"batch_size": 16, "prompt_len": 512, "gen_len": 32},
            "policy": policy,
            "seed": 0,
        }
        return simulate(build_scenario(d, "<test>"))[0]["decode_time_s"]

    dense, alisa = {"name": "dense-gpu"}, {"name": "alisa", "kv_sparsity": 0.5, "gpu_kv_budget_gb": 64}
    assert run(fast, dense) < 0.95 * run(base, dense)  # attention is a fifth of its step here
    assert run(fast, alisa) == pytest.approx(run(base, alisa), rel=1e-12)


def test_table_interpolation_benchmark_scores_both_chords():
    """benchmarks/table_interpolation.py leaves each interior point out: on a latency +
    bytes / bandwidth table the linear chord predicts it exactly, the log-log one high."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "table_interpolation.py"
    spec = importlib.util.spec_from_file_location("table_interpolation", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [{"size": s, "seconds": 20e-6 + s / 3e12} for s in (4.0**i * 1e6 for i in range(6))]
    errs = mod.leave_one_out(rows)
    assert len(errs["linear"]) == 4 and max(abs(e) for e in errs["linear"]) < 1e-9
    assert min(errs["loglog"]) > 0.01
