"""Calibration on the CPU: fits recover known parameters, profiles round-trip, tables
that equal the analytic model give the same simulation, and no GPU is a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from alisa.calibration.fit import fit_latency_bandwidth, table_points
from alisa.calibration.profile import build_profile
from alisa.calibration.run import write_profile
from alisa.cli import main
from alisa.sim.costs import CostModel, SelectionShape
from alisa.sim.hardware import HardwareProfile, load_profile
from alisa.sim.runner import simulate

from .conftest import scenario


@pytest.mark.parametrize("lat_us, gbps", [(8.0, 25.0), (15.0, 55.0), (3.0, 9.0)])
def test_fit_recovers_latency_and_bandwidth_under_noise(lat_us, gbps):
    rng = np.random.default_rng(1)
    x = np.logspace(12, 30, 40, base=2)
    t = (lat_us * 1e-6 + x / (gbps * 1e9)) * rng.lognormal(0, 0.03, x.size)
    f = fit_latency_bandwidth(x, t)
    assert f.rate_per_s / 1e9 == pytest.approx(gbps, rel=0.03)
    assert f.latency_s * 1e6 == pytest.approx(lat_us, rel=0.1)
    assert f.mean_rel_error < 0.05


def test_table_points_are_monotone_and_deduplicated():
    size, sec = table_points(np.array([4, 1, 2, 2, 8]), np.array([3.0, 1.0, 2.0, 4.0, 2.5]))
    assert size == [1, 2, 4, 8]
    assert sec == sorted(sec) and sec[1] == 3.0


def test_table_points_cap_a_slow_copy_at_the_smaller_sizes_rate():
    """rate_monotone: 16 MiB at 35 GB/s between 4 MiB at 50 and 64 MiB at 55 is capped at
    4 MiB's rate (its time x 16/4); the others keep theirs."""
    mib = 2**20
    size = np.array([4 * mib, 16 * mib, 64 * mib])
    sec = size / np.array([50e9, 35e9, 55e9])
    _, plain = table_points(size, sec)
    _, capped = table_points(size, sec, rate_monotone=True)
    assert plain[1] == pytest.approx(sec[1])
    assert capped[1] == pytest.approx(sec[0] * 4) and capped[0] == sec[0] and capped[2] == sec[2]
    # a fixed cost (latency) that amortises is left alone
    lat = 2e-5 + size / 50e9
    assert table_points(size, lat, rate_monotone=True)[1] == pytest.approx(list(lat))


def _synthetic_rows(lat=10e-6, bw=50e9, gather_bw=20e9, hbm=3e12, flops=700e12) -> list[dict]:
    rows = [
        {"op": "launch", "size": 1, "seconds": 4e-6},
        {"op": "hbm_copy", "size": 2 << 30, "seconds": (2 << 30) / hbm},
    ]
    for s in [4 << (2 * i) for i in range(10)]:
        for op, b in (
            ("h2d_pinned", bw),
            ("d2h_pinned", bw * 0.9),
            ("h2d_pageable", bw * 0.2),
            ("d2h_pageable", bw * 0.2),
        ):
            rows.append({"op": op, "size": s, "seconds": lat + s / b})
        rows.append({"op": "h2d_d2h_concurrent", "size": s, "seconds": lat + s / (bw * 0.9)})
    for r in (64, 1024, 16384):
        for t, b in ((1, gather_bw / 4), (8, gather_bw)):
            rows.append(
                {
                    "op": "cpu_gather",
                    "size": r * 16384,
                    "seconds": 2e-6 + r * 16384 / b,
                    "threads": t,
                    "row_bytes": 16384,
                }
            )
    for m in (1, 64, 4096):
        n, k = 4096, 4096
        t = max(2 * m * n * k / flops, (m * k + k * n + m * n) * 2 / hbm) + 4e-6
        rows.append({"op": f"gemm:{n}x{k}", "size": m, "seconds": t, "m": m, "n": n, "k": k, "flops": 2.0 * m * n * k})
    for kvb in (1e6, 1e7, 1e8):
        rows.append({"op": "attention_decode", "size": kvb, "seconds": 5e-6 + kvb / (0.8 * hbm)})
        rows.append({"op": "attention_decode_contiguous", "size": kvb, "seconds": 5e-6 + kvb / (0.9 * hbm)})
        rows.append({"op": "attention_decode_int8", "size": kvb / 2, "seconds": (5e-6 + kvb / 2 / (0.8 * hbm)) * 1.2})
        rows.append({"op": "quantize_int8", "size": kvb, "seconds": 5e-6 + 1.5 * kvb / hbm})
    rows.append({"op": "attention_prefill", "size": 1e12, "seconds": 1e12 / (0.5 * flops)})
    return rows


def _device():
    return {"name": "Synthetic GPU", "memory_bytes": 80e9, "host_memory_bytes": 128e9, "sm_count": 1}


def test_build_profile_recovers_synthetic_hardware(tmp_path):
    p = build_profile(_synthetic_rows(), "synth", _device(), {"date": "2026-01-01", "quick": True})
    assert p["pcie_h2d_gbps"] == pytest.approx(50, rel=0.02)
    assert p["pcie_d2h_gbps"] == pytest.approx(45, rel=0.02)
    assert p["pcie_latency_us"] == pytest.approx(10, rel=0.1)
    assert p["pcie_pageable_factor"] == pytest.approx((0.2 + 0.2 / 0.9) / 2, rel=0.02)  # mean of directions
    assert p["cpu_gather_gbps"] == pytest.approx(20, rel=0.05)
    assert set(p["meta"]["fits"]["cpu_gather"]["threads_by_size"].values()) == {8}
    assert p["hbm_gbps"] == pytest.approx(3000, rel=1e-3)
    assert p["int8_attention_overhead"] == pytest.approx(0.2, abs=0.02)
    # a whole cache read in order has its own table (dense runs), a selection the other
    assert p["meta"]["fits"]["attention_decode_contiguous"]["gbps"] == pytest.approx(2700, rel=0.01)
    assert p["tables"]["attention_decode_contiguous"]["seconds"][-1] < p["tables"]["attention_decode"]["seconds"][-1]
    assert p["attention_efficiency"] == pytest.approx(0.5 * 700 / p["fp16_tflops"], rel=0.02)
    # round trip: write, load through the schema, equal
    out = tmp_path / "synth.yaml"
    write_profile(p, _synthetic_rows(), out)
    loaded = load_profile(str(out))
    assert loaded == HardwareProfile(**yaml.safe_load(out.read_text()))
    assert loaded.source == "measured" and "gemm:4096x4096" in loaded.tables
    assert json.loads(out.with_suffix(".measurements.json").read_text())[0]["op"] == "launch"


def test_pipelined_fetch_rates_define_the_gather_and_token_fetch_costs():
    """Where calibration ran the fetch pipeline (gathers beside copies), its slower rates
    are the simulator's: the gather table and the H2D of gathered rows; a FlexGen-like
    contiguous fetch keeps the plain pinned rate."""
    rows = _synthetic_rows(gather_bw=20e9)
    for r in (64, 1024, 4096):
        n = r * 16384
        rows.append(
            {"op": "cpu_gather_pipelined", "size": n, "seconds": 2e-6 + n / 8e9, "threads": 8, "row_bytes": 16384}
        )
        rows.append({"op": "h2d_fetch", "size": n, "seconds": 10e-6 + n / 25e9, "row_bytes": 16384})
    p = build_profile(rows, "synth", _device(), {"date": "2026-01-01", "quick": True})
    assert p["cpu_gather_gbps"] == pytest.approx(8, rel=0.05)
    assert p["meta"]["fits"]["cpu_gather_alone"]["gbps"] == pytest.approx(20, rel=0.2)
    hw = HardwareProfile(**json.loads(json.dumps(p, default=str)))
    from alisa.sim.costs import CostModel
    from alisa.sim.models import ModelSpec
    from alisa.sim.plan import LayerPlan
    from alisa.sim.step_cost import StepCoster

    c = CostModel(hw)
    n = 1024 * 16384
    assert c.cpu_gather_s(n) == pytest.approx(2e-6 + n / 8e9, rel=1e-6)
    assert c.fetch_h2d_s(n) == pytest.approx(10e-6 + n / 25e9, rel=1e-6)
    assert c.h2d_s(n) == pytest.approx(10e-6 + n / 50e9, rel=0.05)
    md = ModelSpec(
        name="m",
        family="llama",
        num_layers=2,
        hidden_size=4096,
        num_heads=32,
        num_kv_heads=32,
        head_dim=128,
        ffn_dim=11008,
        vocab_size=32000,
        activation="silu",
        norm="rmsnorm",
    )
    coster = StepCoster(md, batch=1, cost=c)
    tok = coster.layer_times(LayerPlan(attended_tokens=1100, h2d_kv_tokens=1024))
    blk = coster.layer_times(LayerPlan(attended_tokens=1100, h2d_kv_tokens=1024, contiguous_fetch=True))
    assert tok.h2d_s == pytest.approx(c.fetch_h2d_s(1024 * coster.kv_bytes))
    assert blk.h2d_s == pytest.approx(c.h2d_s(1024 * coster.kv_bytes))


def test_tables_equal_to_analytic_model_give_the_same_simulation():
    sc = scenario(policy__gpu_kv_budget_gb=0.6, workload__gen_len=96)
    analytic = CostModel(sc.hardware)
    # dense log grids of the analytic model's own values as "measured" tables
    grid = np.logspace(2, 11, 900)
    tables = {
        "h2d_pinned": {"size": list(grid), "seconds": [analytic.h2d_s(x) for x in grid]},
        "d2h_pinned": {"size": list(grid), "seconds": [analytic.d2h_s(x) for x in grid]},
        "cpu_gather": {"size": list(grid), "seconds": [analytic.cpu_gather_s(x) for x in grid]},
        "attention_decode": {"size": list(grid), "seconds": [analytic.attention_decode_s(x) for x in grid]},
    }
    from alisa.sim.models import kv_recompute_gemm_shape, layer_gemm_shapes, lm_head_gemm_shape

    ms = sorted({1, 8, 8 * 128} | set(range(1, 9)))
    for n, k in [s[1:] for s in layer_gemm_shapes(sc.model)] + [
        lm_head_gemm_shape(sc.model),
        kv_recompute_gemm_shape(sc.model),
    ]:
        ms_all = sorted(set(ms) | set(range(1, 8 * 64)))
        tables[f"gemm:{n}x{k}"] = {"size": ms_all, "seconds": [analytic.gemm_s(m, n, k) for m in ms_all]}
    measured = sc.model_copy(
        update={
            "hardware": sc.hardware.model_copy(
                update={
                    "tables": {
                        k: __import__("alisa.sim.hardware", fromlist=["OpTable"]).OpTable(**v)
                        for k, v in tables.items()
                    }
                }
            )
        }
    )
    a, _ = simulate(sc)
    b, _ = simulate(measured)
    assert a["phases"]["II"]["steps"] > 0
    assert b["total_time_s"] == pytest.approx(a["total_time_s"], rel=2e-3)
    assert b["h2d_bytes"] == a["h2d_bytes"]


def test_calibrate_without_gpu_is_a_clear_error(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["calibrate", "--quick", "--out", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "Traceback" not in err
    assert not (tmp_path / "p.yaml").exists()


# -- the real backend's costs: host issue and decode-layer GPU time -----------------------


def test_host_section_recovers_fixed_and_per_sequence_costs():
    from alisa.calibration.host_issue import BATCHES, DEPTHS, PROBES, host_section
    from alisa.sim.hardware import HostIssue

    # a known host: (fixed, per sequence) microseconds per layer for each probe's extra part
    line = {
        "layer_us": (30.0, 0.5),
        "importance_us": (10.0, 0.25),
        "spill_layer_us": (300.0, 4.0),
        "recompute_us": (200.0, 2.0),
        "prefix_us": (80.0, 1.0),
        "step_us": (50.0, 1.0),
        "round_trip_us": (2000.0, 40.0),
        "prefill_layer_us": (800.0, 5.0),
        "fetch_layer_us": (60.0, 1.5),
        "fetch_part_us": (12.0, 0.5),
    }
    u = lambda k, B: line[k][0] + B * line[k][1]  # noqa: E731
    # spilling probes also wait for the fetch worker (per layer); that time is the worker's, not the host's
    wait = {p: (lambda B, p=p: (40.0 + 2.0 * B) if p in ("spill", "recompute") else 0.0) for p in PROBES}
    per_layer = {
        "dense": lambda B: u("layer_us", B),
        "swa": lambda B: u("layer_us", B) + u("importance_us", B),
        "spill": lambda B: u("layer_us", B) + u("importance_us", B) + u("spill_layer_us", B),
        "recompute": lambda B: u("layer_us", B) + u("importance_us", B) + u("spill_layer_us", B) + u("recompute_us", B),
        "prefix": lambda B: u("layer_us", B) + u("prefix_us", B),
    }
    per_step = {
        p: (lambda B, p=p: u("step_us", B) + (u("round_trip_us", B) if p in ("spill", "recompute") else 0))
        for p in PROBES
    }
    # ... and for their selection graph on the GPU (its own profile section), timed apart
    select = {p: (lambda B, L, p=p: (20.0 + 0.3 * L * B) if p in ("spill", "recompute") else 0.0) for p in PROBES}
    rows = [
        {
            "op": f"host_issue:{p}",
            "layers": L,
            "batch": B,
            "size": float(L),
            "seconds": (per_step[p](B) + L * (per_layer[p](B) + wait[p](B)) + select[p](B, L)) * 1e-6,
            "wait_seconds": L * wait[p](B) * 1e-6,
            "selection_seconds": select[p](B, L) * 1e-6,
            "worker_layer_seconds": u("fetch_layer_us", B) * 1e-6 if p in ("spill", "recompute") else 0.0,
            "prefill_seconds": (100.0 + L * u("prefill_layer_us", B)) * 1e-6,
            # copy issue: 25 us + 0.1 per sequence for a one-part layer (the spill probe's),
            # plus the further part for the recompute probe's two-part layers
            **({"copy_issue_1part_seconds": (25.0 + 0.1 * B) * 1e-6} if p == "spill" else {}),
            **(
                {"copy_issue_2part_seconds": (25.0 + 0.1 * B + u("fetch_part_us", B)) * 1e-6}
                if p == "recompute"
                else {}
            ),
        }
        for p in PROBES
        for B in BATCHES
        for L in DEPTHS
    ]
    got = HostIssue(**host_section(rows))
    for k, (c0, c1) in line.items():
        for B in (1, 8, 20, 64):
            assert got.at(k, B) == pytest.approx(c0 + B * c1, rel=1e-3, abs=0.05), k
    # a line crossing zero is clamped there (a cost is never negative)
    assert HostIssue(layer_us=(10.0, -1.0)).at("layer_us", 20) == 0.0


def test_host_probe_own_time_leaves_out_waits_beyond_the_synchronize_floor():
    from alisa.calibration.host_issue import StepCycle, _cycles, own_seconds, waits_in

    syncs = [(1.0, 1.5), (2.0, 2.01), (3.0, 4.0)]  # (start, end), host clock
    # a sync that found its work done costs the floor (0.01), which stays host time
    assert waits_in(0.0, 10.0, syncs, 0.01) == pytest.approx(0.49 + 0.0 + 0.99)
    assert waits_in(1.2, 3.5, syncs, 0.01) == pytest.approx(0.0 + 0.49)  # starts inside only, cut at b
    assert waits_in(5.0, 6.0, syncs, 0.01) == 0.0
    # decode calls of the rehearsal (before the last prefill) are not cycles; each cycle
    # runs to the next step's start, the last to its own end
    cyc = _cycles([(0.1, 0.2), (0.3, 0.4), (1.0, 1.8), (2.0, 2.7), (3.0, 3.2)], [(0.0, 0.05), (0.5, 0.9)])
    assert [(c.start, c.end) for c in cyc] == [(1.0, 2.0), (2.0, 3.0), (3.0, 3.2)]
    # a step: 10 s cycle holding a 2 s wait; its fetch calls 3 s holding a 1 s wait; the
    # selection graph's launch 0.5 s
    c = StepCycle(0.0, 10.0, fetch=[(1.0, 3.0), (6.0, 7.0)], launch=[(0.2, 0.7)])
    own, fetch = own_seconds(c, [(1.5, 2.5), (8.0, 9.0)], 0.0)
    assert own == pytest.approx(10.0 - 2.0 - 0.5) and fetch == pytest.approx(3.0 - 1.0)


def test_host_probe_rows_from_several_processes_take_each_fields_median():
    from alisa.calibration.host_issue import median_rows

    def row(own: float, extra: dict | None = None) -> dict:
        return {
            "op": "host_issue:spill",
            "size": 32.0,
            "layers": 32,
            "batch": 8,
            "own_seconds": own,
            "fetch_own_seconds": own / 2,
            **(extra or {}),
        }

    runs = [[row(3.0, {"flush_bytes": 10})], [row(1.0)], [row(2.0, {"flush_bytes": 30})]]
    (got,) = median_rows(runs)
    assert got["own_seconds"] == 2.0 and got["fetch_own_seconds"] == 1.0
    assert got["flush_bytes"] == 20  # over the processes that have the field
    assert (got["layers"], got["batch"], got["size"], got["op"]) == (32, 8, 32.0, "host_issue:spill")
    assert got["processes"] == 3 and got["own_seconds_by_process"] == [3.0, 1.0, 2.0]
    # different probes stay apart
    other = dict(row(9.0), batch=32)
    assert len(median_rows([[row(1.0), other], [row(2.0)]])) == 2


def test_host_section_from_own_time_rows_ignores_the_gpu_paced_clock():
    from alisa.calibration.host_issue import BATCHES, DEPTHS, PROBES, host_section
    from alisa.sim.hardware import HostIssue

    line = {
        "layer_us": (20.0, 0.2),
        "importance_us": (8.0, 0.1),
        "spill_layer_us": (40.0, 0.5),
        "recompute_us": (30.0, 0.4),
        "prefix_us": (50.0, 1.0),
        "step_us": (300.0, 2.0),
        "round_trip_us": (150.0, 1.0),
        "fetch_layer_us": (60.0, 1.5),
        "fetch_part_us": (12.0, 0.5),
    }

    def u(k: str, B: int) -> float:
        return line[k][0] + B * line[k][1]

    extra = {
        "dense": [],
        "swa": ["importance_us"],
        "spill": ["importance_us", "spill_layer_us"],
        "recompute": ["importance_us", "spill_layer_us", "recompute_us"],
        "prefix": ["prefix_us"],
    }
    rows = []
    for p in PROBES:
        for B in BATCHES:
            for L in DEPTHS:
                spills = p in ("spill", "recompute")
                gather_us = 70.0 + B  # per fetching layer, timed as CPU gathers
                fetch_us = L * (gather_us + u("fetch_layer_us", B)) if spills else 0.0
                # the write-through store at the step's end: 40 us + 20 GB/s over L x B rows of
                # 24 KiB (K, V and x at hidden 4096), inside the step's own time
                flush_bytes = L * B * 24576 if spills else 0
                flush_us = 40.0 + flush_bytes / 20e3 if spills else 0.0
                own_us = (
                    u("step_us", B)
                    + (u("round_trip_us", B) if spills else 0.0)
                    + L * sum(u(k, B) for k in ["layer_us", *extra[p]])
                    + fetch_us
                    + flush_us
                )
                rows.append(
                    {
                        "op": f"host_issue:{p}",
                        "layers": L,
                        "batch": B,
                        "size": float(L),
                        "own_seconds": own_us * 1e-6,
                        "fetch_own_seconds": fetch_us * 1e-6,
                        **({"flush_own_seconds": flush_us * 1e-6, "flush_bytes": flush_bytes} if spills else {}),
                        "fetch_layer_own_seconds": u("fetch_layer_us", B) * 1e-6 if spills else 0.0,
                        # the clock around the step: the narrow model's GPU pace, 100 us a layer
                        "seconds": (500.0 + 100.0 * L) * 1e-6,
                        "wait_seconds": 1e-3,
                        "selection_seconds": 4e-4,
                        "prefill_seconds": (100.0 + L * 900.0) * 1e-6,
                        **({"copy_issue_1part_seconds": (25.0 + 0.1 * B) * 1e-6} if p == "spill" else {}),
                        **(
                            {"copy_issue_2part_seconds": (25.0 + 0.1 * B + u("fetch_part_us", B)) * 1e-6}
                            if p == "recompute"
                            else {}
                        ),
                    }
                )
    got = HostIssue(**host_section(rows))
    for k, (c0, c1) in line.items():
        for B in (1, 8, 20, 64):
            assert got.at(k, B) == pytest.approx(c0 + B * c1, rel=1e-3, abs=0.05), k
    assert got.flush_us == pytest.approx(40.0, abs=0.05) and got.flush_gbps == pytest.approx(20.0, rel=1e-3)


def test_in_run_gather_fit_recovers_part_cost_and_rate():
    from alisa.calibration.host_issue import in_run_gather

    # probes' mean fetching layers: parts, bytes; seconds = 6 us a part + bytes at 28 GB/s
    pts = [(1.0, 2.2e6), (1.0, 8.9e6), (1.8, 1.7e6), (1.9, 6.8e6), (1.0, 0.6e6)]
    rows = [
        {"op": "host_issue:spill", "gather_parts": p, "gather_bytes": b, "gather_layer_seconds": p * 6e-6 + b / 28e9}
        for p, b in pts
    ]
    rows.append({"op": "host_issue:dense", "own_seconds": 1e-3})  # no gathers: not a point
    got = in_run_gather(rows)
    assert got["gather_part_us"] == pytest.approx(6.0, abs=0.01) and got["gather_gbps"] == pytest.approx(28.0, rel=1e-3)
    assert in_run_gather(rows[:1]) == {}  # one point cannot separate the two


def test_decode_layer_section_and_its_use_in_the_step_cost():
    from alisa.calibration.layer_gpu import decode_layer_section
    from alisa.sim.catalog import get_model
    from alisa.sim.models import kv_bytes_per_token_per_layer, layer_gemm_shapes
    from alisa.sim.step_cost import StepCoster

    p = build_profile(_synthetic_rows(), "synth", _device(), {"date": "2026-01-01", "quick": True})
    cost = CostModel(HardwareProfile(**p))
    m = get_model("llama-7b")
    extra = {8: 60.0, 32: 84.0}  # -> 52 us fixed + 1 us per sequence
    rows = []
    for B, us in extra.items():
        gemms = sum(cost.gemm_s(B, n, k) for _, n, k in layer_gemm_shapes(m))
        floor = cost.attention_decode_s(B * kv_bytes_per_token_per_layer(m))
        rows.append(
            {
                "op": "decode_layer:llama/swa",
                "size": float(B),
                "model": "llama-7b",
                "seconds": gemms + floor + us * 1e-6,
            }
        )
    sec = decode_layer_section(rows, p)
    assert sec["llama/swa"] == pytest.approx([52.0, 1.0], abs=0.01)
    hw = HardwareProfile(**{**p, "decode_layer_us": sec})
    gemms16 = sum(CostModel(hw).gemm_s(16, n, k) for _, n, k in layer_gemm_shapes(m))
    swa = StepCoster(m, 16, CostModel(hw), swa=True, cache="swa")
    assert swa.dense_layer_compute_s(16, decode=True) == pytest.approx(gemms16 + (52 + 16) * 1e-6, rel=1e-4)
    # a layout it was not measured for, and prefill, keep the analytic term
    slots = StepCoster(m, 16, CostModel(hw), cache="slots")
    plain = StepCoster(m, 16, CostModel(HardwareProfile(**p)))
    assert slots.dense_layer_compute_s(16, decode=True) == plain.dense_layer_compute_s(16, decode=True)
    assert swa.dense_layer_compute_s(512) == plain.dense_layer_compute_s(512)
    # a spilling run's layout: its own figure where measured, else the SWA layer's
    spill = StepCoster(m, 16, CostModel(hw), swa=True, cache="spill")
    assert spill.dense_layer_compute_s(16, decode=True) == swa.dense_layer_compute_s(16, decode=True)
    hw2 = HardwareProfile(**{**p, "decode_layer_us": {**sec, "llama/spill": (70.0, 2.0)}})
    spill2 = StepCoster(m, 16, CostModel(hw2), swa=True, cache="spill")
    assert spill2.dense_layer_compute_s(16, decode=True) == pytest.approx(gemms16 + (70 + 32) * 1e-6, rel=1e-4)


def test_prefill_layer_section_and_its_use_in_the_step_cost():
    from alisa.calibration.layer_gpu import prefill_layer_section
    from alisa.sim.catalog import get_model
    from alisa.sim.models import layer_gemm_shapes
    from alisa.sim.plan import LayerPlan
    from alisa.sim.step_cost import StepCoster

    p = build_profile(_synthetic_rows(), "synth", _device(), {"date": "2026-01-01", "quick": True})
    cost = CostModel(HardwareProfile(**p))
    m, P = get_model("llama-7b"), 512
    # beyond GEMMs and attention: 200 us + 0.25 us per prompt token, by hand at 4096 and
    # 16384 tokens: 1224 and 4296 us
    rows = []
    for B, us in ((8, 1224.0), (32, 4296.0)):
        gemms = sum(cost.gemm_s(B * P, n, k) for _, n, k in layer_gemm_shapes(m))
        attn = cost.attention_prefill_s(B, m.num_heads, m.head_dim, P)
        rows.append(
            {
                "op": "prefill_layer:llama/spill",
                "size": float(B * P),
                "batch": B,
                "prompt": P,
                "model": "llama-7b",
                "seconds": gemms + attn + us * 1e-6,
            }
        )
    sec = prefill_layer_section(rows, p)
    assert sec["llama/spill"] == pytest.approx([200.0, 0.25], abs=1e-3)
    hw = HardwareProfile(**{**p, "prefill_layer_gpu_us": sec})
    B = 16
    gemms = sum(CostModel(hw).gemm_s(B * P, n, k) for _, n, k in layer_gemm_shapes(m))
    attn = CostModel(hw).attention_prefill_s(B, m.num_heads, m.head_dim, P)
    lp = LayerPlan(new_tokens=P, attended_tokens=P, prefill=True)
    spill = StepCoster(m, B, CostModel(hw), swa=True, cache="spill")
    assert spill.layer_times(lp).compute_s == pytest.approx(gemms + attn + (200 + 0.25 * B * P) * 1e-6, rel=1e-6)
    # decode layers, and a layout it was not measured for, keep their own terms
    plain = StepCoster(m, B, CostModel(HardwareProfile(**p)), swa=True, cache="spill")
    assert spill.dense_layer_compute_s(B, decode=True) == plain.dense_layer_compute_s(B, decode=True)
    slots = StepCoster(m, B, CostModel(hw), cache="slots")
    assert slots.layer_times(lp).compute_s == plain.layer_times(lp).compute_s


def test_prompt_importance_from_two_histories_and_its_use_in_the_step_cost():
    """The SWA prefill probe at two importance histories: the growth per element is the
    prompt importance's cost; the rest, taken at the short history, the layer's line."""
    from alisa.calibration.layer_gpu import prefill_importance_section, prefill_layer_section
    from alisa.sim.catalog import get_model
    from alisa.sim.models import layer_gemm_shapes
    from alisa.sim.plan import LayerPlan
    from alisa.sim.step_cost import StepCoster

    p = build_profile(_synthetic_rows(), "synth", _device(), {"date": "2026-01-01", "quick": True})
    cost = CostModel(HardwareProfile(**p))
    m, P, H = get_model("opt-6.7b"), 512, 32
    # by hand: 100 us + 0.1 us per prompt token, and 50 ps per element (B x 32 heads x
    # rows x 512), at rows 52 and 256
    rows = []
    for B in (8, 32):
        gemms = sum(cost.gemm_s(B * P, n, k) for _, n, k in layer_gemm_shapes(m))
        attn = cost.attention_prefill_s(B, m.num_heads, m.head_dim, P)
        for kk in (52, 256):
            rest_us = 100.0 + 0.1 * B * P + 50e-6 * B * H * kk * P
            rows.append(
                {
                    "op": "prefill_layer:opt/spill",
                    "size": float(B * P),
                    "batch": B,
                    "prompt": P,
                    "model": "opt-6.7b",
                    "history": kk,
                    "heads": H,
                    "seconds": gemms + attn + rest_us * 1e-6,
                }
            )
    assert prefill_importance_section(rows) == {"opt/spill": pytest.approx(50.0, rel=1e-6)}
    assert prefill_layer_section(rows, p)["opt/spill"] == pytest.approx([100.0, 0.1], abs=1e-3)
    # rows from before (one history, none recorded): no importance term, the line as it was
    one = [{k: v for k, v in r.items() if k not in ("history", "heads")} for r in rows if r["history"] == 52]
    assert prefill_importance_section(one) == {}
    hw = HardwareProfile(
        **{
            **p,
            "prefill_layer_gpu_us": prefill_layer_section(rows, p),
            "prefill_importance_ps": prefill_importance_section(rows),
        }
    )
    lp = LayerPlan(new_tokens=P, attended_tokens=P, prefill=True)
    B = 16
    spill = StepCoster(m, B, CostModel(hw), swa=True, cache="spill", importance_history=700)
    no_history = StepCoster(m, B, CostModel(hw), swa=True, cache="spill")
    # rows are min(history, prompt) = 512
    extra = spill.layer_times(lp).compute_s - no_history.layer_times(lp).compute_s
    assert extra == pytest.approx(50e-12 * B * H * 512 * P, rel=1e-6)
    slots = StepCoster(m, B, CostModel(hw), cache="slots", importance_history=700)
    assert slots.prompt_importance_s(B, P) == 0.0


def test_prefill_probes_measure_the_swa_layouts_at_two_histories():
    from alisa.calibration.layer_gpu import PREFILL_LONG_HISTORY, _prefill_probes, prompt_importance_rows
    from alisa.sim.hardware import profile_config

    probes = list(_prefill_probes(profile_config("h100-80gb-measured"), ("opt-6.7b",)))
    rows = {}
    for _, _, cache, B, sc in probes:
        rows.setdefault((cache, B), []).append(prompt_importance_rows(sc))
    assert rows[("slots", 8)] == [0] and rows[("prefix", 32)] == [0]
    # the probe's own history, the window at 520 tokens (s 0.8: 104 attended, 52 window), and the long one
    assert rows[("swa", 8)] == [52, PREFILL_LONG_HISTORY] and rows[("spill", 32)] == [52, PREFILL_LONG_HISTORY]


def test_an_alisa_run_times_its_prefill_importance_at_its_own_history(write_yaml):
    """make_policy hands the policy's importance history to the step cost: a longer run
    (a longer default history) has a longer simulated prefill, all else equal."""
    from alisa.sim.runner import simulate
    from alisa.sim.scenario import load_scenario

    hw = "h100-80gb-measured"
    prefill = {}
    for gen in (64, 1024):
        sc = load_scenario(
            write_yaml(
                {
                    "name": f"p{gen}",
                    "model": "opt-6.7b",
                    "hardware": hw,
                    "workload": {"batch_size": 8, "prompt_len": 512, "gen_len": gen},
                    "policy": {"name": "alisa", "kv_sparsity": 0.8, "gpu_kv_budget_tokens": 320},
                }
            ),
            ["hardware.prefill_importance_ps={'opt/spill': 60.0}"],
        )
        prefill[gen] = simulate(sc)[0]["prefill_time_s"]
    # histories 58 and 154 rows (the window at 576 and 1536 tokens), 32 layers, 32 heads
    assert prefill[1024] - prefill[64] == pytest.approx(60e-12 * 8 * 32 * (154 - 58) * 512 * 32, rel=0.02)


def test_selection_section_recovers_a_known_cost_and_the_step_cost_uses_it():
    from alisa.calibration.selection_gpu import GRID, selection_section

    # 30 us + 0.02 ns per position element + 0.05 per slot element + 0.4 per global element
    rows = [
        {
            "op": "selection_graph",
            "layers": L,
            "batch": B,
            "positions": N,
            "slots": C,
            "global_max": K,
            "size": float(L * B * N),
            "seconds": (30.0 + 1e-3 * (0.02 * L * B * N + 0.05 * L * B * (C + 1) + 0.4 * L * B * K)) * 1e-6,
        }
        for L, B, N, C, K in GRID
    ]
    sec = selection_section(rows)
    assert sec["fixed_us"] == pytest.approx(30.0, rel=1e-3)
    assert (sec["per_position_ns"], sec["per_slot_ns"], sec["per_global_ns"]) == pytest.approx(
        (0.02, 0.05, 0.4), rel=1e-3
    )
    assert sec["fit_rel_error"] < 1e-3
    p = build_profile(_synthetic_rows() + rows, "synth", _device(), {"date": "2026-01-01", "quick": True})
    cost = CostModel(HardwareProfile(**p))
    # by hand: 32 x 8 rows; 1536 positions, 541 slots, 246 global -> 30 + 7.86 + 6.92 + 25.19 us
    assert cost.selection_s(SelectionShape(32, 8, 1536, 540, 246)) == pytest.approx(69.98e-6, rel=1e-3)
    assert cost.selection_s(None) == 0.0
    assert selection_section(rows[:3]) is None  # too few shapes to fit four terms


def test_a_spilling_alisa_run_is_costed_with_the_spill_layout():
    from alisa.sim.policies import make_policy

    base = dict(
        hardware="h100-80gb-measured",
        model="llama-7b",
        workload__prompt_len=512,
        workload__gen_len=64,
        policy={"name": "alisa", "kv_sparsity": 0.8, "gpu_kv_budget_tokens": 320},
    )
    spilling = make_policy(scenario(**base))
    assert spilling.spills and spilling.coster.cache == "spill"
    # its selection's shapes: 32 layers, batch 8 (the default), N = 512 + 64, C = 320 and
    # K = a - w at n = 576: a = ceil(0.2 x 576) = 116, w = 58 -> 58
    assert spilling.coster.selection == SelectionShape(32, 8, 576, 320, 58)
    resident = make_policy(scenario(**{**base, "policy": {**base["policy"], "gpu_kv_budget_tokens": 4096}}))
    assert not resident.spills and resident.coster.cache == "swa"
    assert resident.coster.selection is None and resident.coster.selection_s(True) == 0.0


def test_recompute_is_costed_at_the_real_backends_width_bucket():
    from alisa.sim.catalog import get_model
    from alisa.sim.hardware import load_profile
    from alisa.sim.models import kv_recompute_gemm_shape
    from alisa.sim.plan import LayerPlan
    from alisa.sim.step_cost import StepCoster

    m = get_model("llama-7b")
    n, k = kv_recompute_gemm_shape(m)
    for name, rows in (("h100-80gb-measured", 96), ("h100-80gb", 91)):  # measured host: a bucket; datasheet: exact
        cost = CostModel(load_profile(name))
        coster = StepCoster(m, 32, cost, swa=True, cache="spill")
        lp = dict(attended_tokens=300, d2h_kv_tokens=1, d2h_hidden_tokens=1)
        extra = (
            coster.layer_times(LayerPlan(recompute_tokens=91, **lp)).compute_s
            - coster.layer_times(LayerPlan(**lp)).compute_s
        )
        assert extra == pytest.approx(coster.recompute_s(32 * rows), rel=1e-9), name
        assert coster.recompute_s(32 * rows) >= cost.gemm_s(32 * rows, n, k)


def test_a_phase3_layer_gathers_each_part_apart_and_the_host_flushes_the_write_through():
    from alisa.sim.catalog import get_model
    from alisa.sim.hardware import HostIssue, load_profile
    from alisa.sim.plan import LayerPlan
    from alisa.sim.step_cost import StepCoster

    m = get_model("llama-7b")
    base = load_profile("h100-80gb-measured")
    hw = base.model_copy(
        update={
            "host": base.host.model_copy(
                update={
                    "fetch_layer_us": (30.0, 0.0),
                    "fetch_part_us": (10.0, 0.5),
                    "gather_gbps": 0.0,
                    "flush_gbps": 0.0,
                }
            )
        }
    )
    cost = CostModel(hw)
    coster = StepCoster(m, 8, cost, swa=True, cache="spill")
    kv, x = 8 * 20 * 16384, 8 * 12 * 8192  # LLaMA-7B: 16 KiB of KV, 8 KiB of x per token and layer
    both = coster.layer_times(
        LayerPlan(attended_tokens=300, h2d_kv_tokens=20, recompute_tokens=12, d2h_kv_tokens=1, d2h_hidden_tokens=1)
    )
    # by hand: one gather per part, the layer's fetch overhead, and one further part (10 + 8 x 0.5 us)
    assert both.gather_s == pytest.approx(cost.cpu_gather_s(kv) + cost.cpu_gather_s(x) + 44e-6, rel=1e-9)
    assert both.h2d_bytes == kv + x
    kv_only = coster.layer_times(LayerPlan(attended_tokens=300, h2d_kv_tokens=20, d2h_kv_tokens=1, d2h_hidden_tokens=1))
    assert kv_only.gather_s == pytest.approx(cost.cpu_gather_s(kv) + 30e-6, rel=1e-9)
    # with the executor's own gathers measured (5 us a part, 25 GB/s) they time the parts instead
    own = hw.model_copy(update={"host": hw.host.model_copy(update={"gather_part_us": 5.0, "gather_gbps": 25.0})})
    both_own = StepCoster(m, 8, CostModel(own), swa=True, cache="spill").layer_times(
        LayerPlan(attended_tokens=300, h2d_kv_tokens=20, recompute_tokens=12, d2h_kv_tokens=1, d2h_hidden_tokens=1)
    )
    assert both_own.gather_s == pytest.approx(2 * 5e-6 + (kv + x) / 25e9 + 44e-6, rel=1e-9)
    # the flush: the step's D2H bytes (K, V and x of the new token, every sequence), at the
    # probes' measured store cost (40 us + 20 GB/s); a decode step of the spill layout only,
    # on a measured host only
    times = [both] * 32
    d2h = 32 * 8 * (16384 + 8192)
    assert sum(t.d2h_bytes for t in times) == d2h
    stores = hw.model_copy(update={"host": hw.host.model_copy(update={"flush_us": 40.0, "flush_gbps": 20.0})})
    flushing = StepCoster(m, 8, CostModel(stores), swa=True, cache="spill")
    assert flushing.flush_s(times) == pytest.approx(40e-6 + d2h / 20e9, rel=1e-9)
    assert flushing.flush_s(times, prefill=True) == 0.0
    assert StepCoster(m, 8, CostModel(stores), swa=True, cache="swa").flush_s(times) == 0.0
    # probes that did not time the store apart hold it in their per-layer fields: not again
    assert coster.flush_s(times) == 0.0
    ideal = hw.model_copy(update={"host": HostIssue()})
    assert StepCoster(m, 8, CostModel(ideal), swa=True, cache="spill").flush_s(times) == 0.0


def test_recompute_layer_section_and_its_use_in_the_step_cost():
    from alisa.calibration.layer_gpu import recompute_layer_section
    from alisa.sim.catalog import get_model
    from alisa.sim.models import kv_recompute_gemm_shape
    from alisa.sim.step_cost import StepCoster

    p = build_profile(_synthetic_rows(), "synth", _device(), {"date": "2026-01-01", "quick": True})
    cost = CostModel(HardwareProfile(**p))
    m = get_model("llama-7b")
    n, k = kv_recompute_gemm_shape(m)
    # beyond the GEMM: 20 us + 0.05 us per row, at 128 .. 3072 rows
    rows = [
        {
            "op": "recompute_layer:llama",
            "size": float(t),
            "model": "llama-7b",
            "seconds": cost.gemm_s(t, n, k) + (20.0 + 0.05 * t) * 1e-6,
        }
        for t in (128, 768, 512, 3072)
    ]
    sec = recompute_layer_section(rows, p)
    assert sec["llama"] == pytest.approx([20.0, 0.05], abs=1e-3)
    hw = HardwareProfile(**{**p, "recompute_layer_us": sec})
    coster = StepCoster(m, 32, CostModel(hw))
    assert coster.recompute_s(1000) == pytest.approx(cost.gemm_s(1000, n, k) + 70e-6, rel=1e-4)
    assert coster.recompute_s(0) == 0.0
    # another family keeps the GEMM alone
    opt = get_model("opt-6.7b")
    no, ko = kv_recompute_gemm_shape(opt)
    assert StepCoster(opt, 32, CostModel(hw)).recompute_s(1000) == pytest.approx(cost.gemm_s(1000, no, ko), rel=1e-9)


def test_zero_copy_section_recovers_a_known_gather_and_the_cost_model_uses_it():
    from alisa.calibration.zero_copy import ROW_BYTES, ROWS, zero_copy_section

    # 12 us + bytes at 45 GB/s (16 KiB rows) or 30 GB/s (8 KiB rows); layers 20% and 30%
    # slower beside a gather (median 25%); issue 18 us
    rate = {16384: 45e9, 8192: 30e9}
    rows = [
        {
            "op": "zero_copy_gather",
            "size": float(n * rb),
            "seconds": 12e-6 + n * rb / rate[rb],
            "row_bytes": rb,
            "rows": n,
        }
        for rb in ROW_BYTES
        for n in ROWS
    ]
    # the gathers beside the layers: 10% and 40% slower (median 25% too: 0.25 both ways
    # would hide a swap, so 0.1/0.4 against 0.2/0.3)
    rows += [
        {
            "op": "zero_copy_slowdown",
            "size": 8.0,
            "seconds": 1e-3,
            "seconds_beside": 1.2e-3,
            "gather_seconds": 3e-3,
            "gather_seconds_beside": 3.3e-3,
        },
        {
            "op": "zero_copy_slowdown",
            "size": 32.0,
            "seconds": 2e-3,
            "seconds_beside": 2.6e-3,
            "gather_seconds": 3e-3,
            "gather_seconds_beside": 4.5e-3,
        },
        {"op": "zero_copy_issue", "size": 1.0, "seconds": 18e-6},
    ]
    sec = zero_copy_section(rows)
    assert sec["fixed_us"] == pytest.approx(12.0, rel=1e-3) and sec["gbps"] == pytest.approx(45.0, rel=1e-3)
    assert sec["row_gbps"] == pytest.approx({16384: 45.0, 8192: 30.0}, rel=1e-3)
    assert sec["compute_slowdown"] == pytest.approx(0.25) and sec["issue_us"] == pytest.approx(18.0)
    assert sec["gather_slowdown"] == pytest.approx(0.3)
    p = build_profile(_synthetic_rows() + rows, "synth", _device(), {"date": "2026-01-01", "quick": True})
    cost = CostModel(HardwareProfile(**p))
    assert cost.zero_copy_gather_s(9e6) == pytest.approx(12e-6 + 9e6 / 45e9, rel=1e-3)
    # by row size: 8 KiB rows at their own rate; 12 KiB rows take the smaller size's;
    # 2 KiB rows, below every size, a quarter of 8 KiB rows' (as many rows a second)
    assert cost.zero_copy_gather_s(9e6, 8192) == pytest.approx(12e-6 + 9e6 / 30e9, rel=1e-3)
    assert cost.zero_copy_gather_s(9e6, 12288) == pytest.approx(12e-6 + 9e6 / 30e9, rel=1e-3)
    assert cost.zero_copy_gather_s(9e6, 16384) == pytest.approx(12e-6 + 9e6 / 45e9, rel=1e-3)
    assert cost.zero_copy_gather_s(9e6, 2048) == pytest.approx(12e-6 + 9e6 / 7.5e9, rel=1e-3)
    # a layer's parts in one kernel: the fixed cost once, each part at its rows' rate
    assert cost.zero_copy_layer_s([(9e6, 16384), (3e6, 8192), (0.0, 128)]) == pytest.approx(
        12e-6 + 9e6 / 45e9 + 3e6 / 30e9, rel=1e-3
    )
    assert zero_copy_section(rows[:1]) is None
