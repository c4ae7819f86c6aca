"""Run one scenario through a policy and the SimPy engine; write its outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .engine import Engine, EngineResult
from .fast_engine import FastEngine
from .hardware import HardwareProfile
from .policies import make_policy
from .results import build_result, write_outputs
from .scenario import Scenario


def simulate(
    sc: Scenario, timing: HardwareProfile | None = None, exact: bool = False
) -> tuple[dict[str, Any], EngineResult]:
    """The scenario's plans, timed by its own hardware profile or by ``timing`` (the same
    plans, other costs: ``alisa validate --host-conditioned``). ``exact``: the full SimPy
    event model instead of its closed form (the same schedule, several times slower)."""
    policy = make_policy(sc)
    coster = policy.coster.with_hardware(timing) if timing is not None else None
    engine = Engine if exact else FastEngine
    er = engine(policy, max_layer_events=sc.output.trace_max_layer_events, coster=coster).run()
    return build_result(sc, er), er


def render_plots(sc: Scenario, er: EngineResult) -> dict[str, bytes]:
    from .plots import memory_plot, step_time_plot  # matplotlib only when plotting

    title = f"{sc.name}: {sc.model.name}, {sc.policy.name}, {sc.hardware.name}"
    return {
        "memory.png": memory_plot(er, title, sc.hardware.gpu_memory_bytes, sc.hardware.cpu_memory_bytes),
        "step_time.png": step_time_plot(er, title),
    }


def run_scenario(
    sc: Scenario,
    out: Path | None,
    plots: bool = True,
    timing: HardwareProfile | None = None,
    exact: bool = False,
) -> dict[str, Any]:
    result, er = simulate(sc, timing, exact)
    if out is not None:
        write_outputs(out, result, er, render_plots(sc, er) if plots else {})
    return result
