"""alisa validate's per-layer comparison: where a layer's time goes in the simulator's trace
against the measured one, by phase, checked on hand-made traces."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from alisa.runtime.validate import layer_breakdown

LANES = {0: "GPU compute", 1: "H2D", 2: "D2H", 3: "CPU", 4: "Host"}


def _run(folder: Path, spans: list[tuple[int, str, int, float]], phases: dict[int, str]) -> Path:
    """A run folder with a trace of (lane tid, name, step, microseconds) spans and the steps' phases."""
    folder.mkdir(parents=True)
    ev: list[dict] = [
        {"name": "thread_name", "ph": "M", "pid": 0, "tid": t, "args": {"name": n}} for t, n in LANES.items()
    ]
    ev += [
        {"name": n, "ph": "X", "pid": 0, "tid": t, "ts": 0.0, "dur": us, "args": {"step": s}} for t, n, s, us in spans
    ]
    (folder / "trace.json").write_text(json.dumps({"traceEvents": ev}))
    (folder / "result.json").write_text("{}")
    with open(folder / "steps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "phase", "context_len", "time_s"])
        for s, ph in phases.items():
            w.writerow([s, ph, 100 + s, 0.01])
    return folder


def test_the_breakdown_takes_waits_off_the_measured_compute_and_keeps_phases_apart(tmp_path):
    phases = {0: "II", 1: "II", 2: "III"}
    real, sim = [], []
    for s in phases:
        for layer in range(2):
            # measured: a 300 us layer span holding a 20 us wait; a 100 us gather
            real += [(0, f"L{layer}", s, 300.0), (0, f"wait copy L{layer}", s, 20.0), (1, f"L{layer}", s, 100.0)]
            # simulated: 252 us of compute (10 % short of 280), a 125 us gather (25 % long)
            sim += [(0, f"L{layer}", s, 252.0 if phases[s] == "II" else 308.0), (1, f"L{layer}", s, 125.0)]
    real += [(0, "select", 0, 50.0), (0, "prefill L0", -1, 900.0)]  # neither is a decode layer
    out = layer_breakdown(_run(tmp_path / "sim", sim, phases), _run(tmp_path / "real", real, phases))
    assert set(out) == {"II", "III"}
    two = out["II"]
    assert two["compute"]["real_s"] == pytest.approx(280e-6) and two["compute"]["error"] == pytest.approx(-0.1)
    assert two["h2d"]["error"] == pytest.approx(0.25) and two["compute"]["n"] == 4
    assert two["wait"]["real_s"] == pytest.approx(20e-6) and two["wait"]["error"] is None  # measured only
    assert out["III"]["compute"]["error"] == pytest.approx(0.1) and out["III"]["compute"]["n"] == 2
    # only steps both traces hold
    out = layer_breakdown(_run(tmp_path / "sim1", [t for t in sim if t[2] == 0], phases), tmp_path / "real")
    assert set(out) == {"II"} and out["II"]["compute"]["n"] == 2
