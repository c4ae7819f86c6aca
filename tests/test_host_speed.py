"""A measured run's host speed against the simulator's (runtime/host_speed.py), the host
costs scaled by it (HostIssue.scaled), and the same plans re-timed (simulate(timing=))."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alisa.runtime.host_speed import host_factor, real_host_own_s, sim_host_own_s, tracing_cost_s
from alisa.sim.hardware import HostIssue
from alisa.sim.runner import simulate

from .conftest import scenario

LANES = {"GPU compute": 0, "H2D": 1, "CPU": 3, "Host": 4}


def _trace(path: Path, spans: list[tuple[str, str, float, float, int]]) -> Path:
    """A Chrome trace as both backends write it: lanes by thread name, spans in µs."""
    ev = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": t, "args": {"name": n}} for n, t in LANES.items()]
    ev += [
        {"name": name, "ph": "X", "pid": 0, "tid": LANES[lane], "ts": ts, "dur": dur, "args": {"step": step}}
        for lane, name, ts, dur, step in spans
    ]
    path.write_text(json.dumps({"traceEvents": ev}))
    return path


def _real(path: Path, scale: float) -> Path:
    # step 0: cycle from select (0) to end's end (1000) x scale, less its waits (wait
    # selection 200, throttle 50, before copy 30, all x scale): own 720 x scale µs. The
    # GPU's own "select" and the prefill (step -1) do not count.
    s = scale
    return _trace(
        path,
        [
            ("Host", "select", 0, 100 * s, 0),
            ("Host", "wait selection", 100 * s, 200 * s, 0),
            ("GPU compute", "select", 0, 5000, 0),
            ("Host", "issue L0", 300 * s, 100 * s, 0),
            ("CPU", "gather L0", 400 * s, 100 * s, 0),
            ("CPU", "before copy L0", 500 * s, 30 * s, 0),
            ("Host", "throttle L0", 600 * s, 50 * s, 0),
            ("Host", "end", 900 * s, 100 * s, 0),
            ("Host", "select", -9000, 100, -1),
            ("Host", "end", -100, 50, -1),
        ],
    )


def test_real_own_time_is_the_cycle_less_its_waits(tmp_path: Path) -> None:
    assert real_host_own_s(_real(tmp_path / "r.json", 1.0)) == {0: pytest.approx(720e-6)}


def test_sim_own_time_sums_the_host_and_gather_spans(tmp_path: Path) -> None:
    sim = _trace(
        tmp_path / "s.json",
        [
            ("Host", "step", 0, 100, 0),
            ("Host", "issue L0", 100, 120, 0),
            ("CPU", "gather L0", 220, 80, 0),
            ("Host", "flush", 300, 60, 0),
            ("GPU compute", "L0", 0, 4000, 0),
            ("H2D", "L0", 0, 900, 0),
        ],
    )
    assert sim_host_own_s(sim) == {0: pytest.approx(360e-6)}


def _run(folder: Path, scale: float, step_s: dict[int, float]) -> Path:
    folder.mkdir()
    _real(folder / "trace.json", scale)
    (folder / "steps.csv").write_text("step,phase,time_s\n" + "".join(f"{k},II,{v}\n" for k, v in step_s.items()))
    return folder


def test_host_factor_is_the_median_over_runs_of_measured_over_simulated(tmp_path: Path) -> None:
    sim = _trace(tmp_path / "s.json", [("Host", "issue L0", 0, 360, 0)])
    # step 0 (traced) ran as long as its untraced neighbours: tracing cost it nothing
    runs = [_run(tmp_path / f"r{i}", s, {0: 0.01, 1: 0.01, 2: 0.01}) for i, s in enumerate((1.0, 0.5, 1.5))]
    hf = host_factor(runs, sim)
    assert hf is not None
    assert hf["per_run"] == pytest.approx([2.0, 1.0, 3.0])
    assert hf["factor"] == pytest.approx(2.0)
    assert host_factor(runs, _trace(tmp_path / "empty.json", [])) is None
    # traced, step 0 ran 360 µs longer than its neighbours: that much less own time
    slow = _run(tmp_path / "slow", 1.0, {0: 0.01036, 1: 0.01, 2: 0.01})
    got = host_factor([slow], sim)
    assert got is not None and got["factor"] == pytest.approx(1.0)


def test_tracing_cost_against_untraced_neighbours() -> None:
    step_s = {0: 1.2, 1: 1.5, 2: 1.0, 3: 1.0, 4: 1.1, 5: 2.0, 6: 0.8}
    # untraced steps within 3: step 0 -> 2, 3 (median 1.0, cost 0.2); step 1 -> 2, 3, 4
    # (1.0, cost 0.5); step 5 -> 2, 3, 4 (1.0, cost 1.0); step 6 -> 3, 4 (1.05; it ran
    # faster: cost 0)
    cost = tracing_cost_s(step_s, {0, 1, 5, 6})
    assert cost == pytest.approx({0: 0.2, 1: 0.5, 5: 1.0, 6: 0.0})
    # within 2: step 2 -> 4 (cost 1.0), step 3 -> 4, 5 (1.25, cost 0.75); steps 0 and 1
    # have no untraced step that near and take the others' median, 0.875
    cost = tracing_cost_s({0: 2.0, 1: 2.0, 2: 2.0, 3: 2.0, 4: 1.0, 5: 1.5}, {0, 1, 2, 3}, window=2)
    assert cost == pytest.approx({0: 0.875, 1: 0.875, 2: 1.0, 3: 0.75})


def test_scaled_host_is_slower_by_the_factor() -> None:
    h = HostIssue(layer_us=(10.0, 2.0), step_us=100.0, gather_part_us=5.0, gather_gbps=40.0, flush_gbps=20.0)
    s = h.scaled(1.5)
    for name in HostIssue.model_fields:
        if not name.endswith("_gbps"):
            assert s.at(name, 8) == pytest.approx(1.5 * h.at(name, 8))
    assert (s.gather_gbps, s.flush_gbps) == pytest.approx((40 / 1.5, 20 / 1.5))
    with pytest.raises(ValueError):
        h.scaled(0.0)


def test_same_plans_retimed_with_a_slower_host() -> None:
    # a spilling ALISA run on a profile with a measured host: twice the host's costs move
    # the same bytes (the same plans) and cannot make it faster; the same profile changes nothing
    sc = scenario(workload__gen_len=128, policy__gpu_kv_budget_gb=0.4)
    hw = sc.hardware.model_copy(
        update={
            "host": HostIssue(
                layer_us=40.0,
                spill_layer_us=30.0,
                step_us=200.0,
                fetch_layer_us=30.0,
                gather_part_us=20.0,
                gather_gbps=10.0,
            )
        }
    )
    sc = sc.model_copy(update={"hardware": hw})
    base, _ = simulate(sc)
    same, _ = simulate(sc, hw)
    slow, _ = simulate(sc, hw.model_copy(update={"host": hw.host.scaled(2.0)}))
    assert same["throughput_tokens_per_s"] == pytest.approx(base["throughput_tokens_per_s"])
    assert (slow["h2d_bytes"], slow["d2h_bytes"]) == (base["h2d_bytes"], base["d2h_bytes"])
    assert slow["throughput_tokens_per_s"] < base["throughput_tokens_per_s"]
