"""The closed-form engine (the default) against the full SimPy event model (``--exact``):
every result field within 0.5% over the bundled scenarios and each policy, and the same
trace events. Hand-computed schedules for both engines are in test_engine.py."""

from __future__ import annotations

from typing import Any

import pytest

from alisa.sim.bundled import resolve_scenario, scenario_files, scenario_name
from alisa.sim.runner import simulate
from alisa.sim.scenario import POLICY_NAMES, Scenario, expand_sweep, load_scenario

TOLERANCE = 0.005
SCALARS = (
    "throughput_tokens_per_s",
    "tokens_generated",
    "total_time_s",
    "prefill_time_s",
    "decode_time_s",
    "peak_gpu_bytes",
    "peak_cpu_bytes",
    "h2d_bytes",
    "d2h_bytes",
    "recomputed_tokens",
    "oom",
    "oom_pool",
    "sim_events",
    "trace_truncated_at_step",
)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= TOLERANCE * max(abs(a), abs(b)) + 1e-15
    return bool(a == b)


def _assert_same(sc: Scenario) -> None:
    fast, fer = simulate(sc)
    exact, eer = simulate(sc, exact=True)
    for k in SCALARS:
        assert _close(fast[k], exact[k]), (k, fast[k], exact[k])
    for ph in ("I", "II", "III"):
        assert fast["phases"][ph]["steps"] == exact["phases"][ph]["steps"]
        assert _close(fast["phases"][ph]["time_s"], exact["phases"][ph]["time_s"]), ph
    assert fast["policy_details"] == exact["policy_details"]
    assert len(fer.steps) == len(eer.steps)
    for a, b in zip(fer.steps, eer.steps, strict=True):
        assert _close(a.end_s, b.end_s) and a.h2d_bytes == b.h2d_bytes and a.phase == b.phase


def _first_points() -> list[tuple[str, Scenario]]:
    return [(scenario_name(f), expand_sweep(f)[0][1]) for f in scenario_files()]


@pytest.mark.parametrize("name, sc", _first_points(), ids=lambda x: x if isinstance(x, str) else "")
def test_bundled_scenarios_match_the_event_model(name: str, sc: Scenario) -> None:
    _assert_same(sc)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_each_policy_matches_the_event_model(policy: str) -> None:
    """Each policy on OPT-6.7B at a batch where the offloading ones move KV or weights."""
    sc = load_scenario(
        resolve_scenario("paper/opt-6.7b"),
        ["sweep=null", f"policy={{name: {policy}}}", "workload.batch_size=16", "workload.gen_len=256"],
    )
    _assert_same(sc)


@pytest.mark.parametrize(
    "scenario, sets",
    [
        ("validation/alisa", ["model=opt-6.7b", "workload.batch_size=8", "workload.gen_len=64"]),  # inline host
        ("validation/alisa-device", ["workload.batch_size=8", "workload.gen_len=64"]),  # device gather
        ("default", ["workload.gen_len=48"]),  # the CPU gather worker, write-backs past the step
    ],
)
def test_trace_events_are_the_event_models(scenario: str, sets: list[str]) -> None:
    sc = load_scenario(resolve_scenario(scenario), ["sweep=null", *sets])
    _, fer = simulate(sc)
    _, eer = simulate(sc, exact=True)

    def key(e: tuple[str, str, float, float, dict[str, Any]]) -> tuple[str, str, int, float]:
        return e[0], e[1], e[4].get("step", -2), round(e[2], 12)

    fast, exact = sorted(fer.events, key=key), sorted(eer.events, key=key)
    assert len(fast) == len(exact) > 0
    for a, b in zip(fast, exact, strict=True):
        assert a[:2] == b[:2] and a[4] == b[4]
        assert a[2] == pytest.approx(b[2], rel=1e-9, abs=1e-12) and a[3] == pytest.approx(b[3], rel=1e-9, abs=1e-12)
