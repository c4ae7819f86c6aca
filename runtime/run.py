"""Run one scenario on the real backend and write the simulator's files for it."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from alisa.sim.results import build_result, write_outputs
from alisa.sim.runner import render_plots
from alisa.sim.scenario import Scenario

from .executor import RealExecutor, RealOptions


def release_gpu() -> None:
    """Give the last run's weights, pools and graph memory back before the next one (a
    validation runs many in one process; the executor's objects may sit in cycles)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_real(sc: Scenario, out: Path | None, opts: RealOptions | None = None, plots: bool = True) -> dict[str, Any]:
    """Everything is measured before anything is written; an error leaves no files."""
    run = RealExecutor(sc, opts).run()
    result = build_result(sc, run.er, backend="real")
    result["real"] = run.info
    release_gpu()
    if out is not None:
        write_outputs(out, result, run.er, render_plots(sc, run.er) if plots else {})
    return result
