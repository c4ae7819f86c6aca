"""Run one scenario on the real backend and write the simulator's files for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alisa.sim.results import build_result, write_outputs
from alisa.sim.runner import render_plots
from alisa.sim.scenario import Scenario

from .executor import RealExecutor, RealOptions


def run_real(sc: Scenario, out: Path | None, opts: RealOptions | None = None, plots: bool = True) -> dict[str, Any]:
    """Everything is measured before anything is written; an error leaves no files."""
    run = RealExecutor(sc, opts).run()
    result = build_result(sc, run.er, backend="real")
    result["real"] = run.info
    if out is not None:
        write_outputs(out, result, run.er, render_plots(sc, run.er) if plots else {})
    return result
