"""Calibration's step probe: the executor's own spilling steps, wet and dry, turned into the
spill layer's, the recompute's and the slowdowns' terms. The section is checked against
rows built from known terms; the probe's plumbing by running it on tiny models (on the
CPU, Triton's interpreter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alisa.calibration.profile import build_profile
from alisa.calibration.step_probe import FIELDS, predicted, probe_rows, probe_scenario, step_probe_section
from alisa.runtime.device_fetch import DeviceFetcher
from alisa.runtime.executor import RealExecutor, RealOptions
from alisa.runtime.validate import layer_parts
from alisa.sim.hardware import HardwareProfile, load_profile

from .test_real_backend import DEVICE, TINY_LLAMA, TINY_OPT

ROOT = Path(__file__).resolve().parent.parent


def _opts(dry: bool) -> RealOptions:
    return RealOptions(
        device=None if DEVICE == "cuda" else "cpu", act_dtype="float32", layer_trace_steps=99, gather_dry=dry
    )


def _tiny(model: dict, batch: int, ratio: float) -> object:
    hw = load_profile("h100-80gb-measured").model_dump()
    return probe_scenario(hw, model, batch, ratio, steps=6, prompt=40, budget=28)


@pytest.mark.parametrize("ratio", [0.0, 0.5], ids=["phase-II", "phase-III"])
def test_the_probe_samples_every_layer_of_every_decode_step_wet_and_dry(ratio):
    sc = _tiny(TINY_LLAMA, 2, ratio)
    rows = probe_rows(sc, "llama", "tiny-llama", ratio, _opts)
    assert [r["mode"] for r in rows] == ["wet", "dry"]
    pred = predicted(sc)
    for r in rows:
        assert r["op"] == "step_probe" and r["fields"] == list(FIELDS) and r["size"] == 2.0
        keys = [(s[0], s[1]) for s in r["samples"]]
        assert keys == sorted(pred)  # every (step, layer) of the plans' decode steps
        assert {k[1] for k in keys} == {0, 1} and len({k[0] for k in keys}) == 5
        ds = [dict(zip(FIELDS, s, strict=True)) for s in r["samples"]]
        assert all(d["compute_s"] > 0 and d["predicted_compute_s"] > 0 for d in ds)
        # the recompute's rows: none in Phase II, some in Phase III
        assert any(d["recompute_rows"] > 0 for d in ds) == (ratio > 0)
    # the same plans wet and dry: the same bytes per layer
    assert [s[4] for s in rows[0]["samples"]] == [s[4] for s in rows[1]["samples"]]
    assert sum(s[4] for s in rows[0]["samples"]) > 0


def test_a_dry_gather_launches_nothing_and_keeps_its_events(monkeypatch):
    calls = {"n": 0}
    real_body = DeviceFetcher.body

    def counting(self, l):
        calls["n"] += 1
        return real_body(self, l)

    monkeypatch.setattr(DeviceFetcher, "body", counting)
    for dry in (False, True):
        calls["n"] = 0
        sc = _tiny(TINY_OPT, 2, 0.0)
        run = RealExecutor(sc, _opts(dry)).run()
        spans = layer_parts(run.er.log.events())
        assert spans and all(v.get("bytes", 0) > 0 for v in spans.values())  # the plan's rows, counted either way
        if dry:
            assert calls["n"] == 0
        else:
            assert calls["n"] > 0


def _synthetic(fixed: float, per_seq: float, rec: tuple[float, float], cs: float, gs: float) -> list[dict]:
    """Rows whose dry layers take the model's other terms plus known ones, and whose wet
    layers and gathers are slowed by known shares of the overlap."""
    rows = []
    for B in (8, 40):
        for ratio in (0.0, 0.5, 1.0):
            dry, wet = [], []
            for step in range(4):
                for layer in range(4):
                    pc = 200e-6 + 3e-6 * B + 1e-6 * step
                    pg = (60e-6 + 20e-6 * layer) * (1.0 - 0.5 * ratio)
                    rrows = int(B * 20 * ratio * (1 + step % 2))
                    extra = fixed + per_seq * B + ((rec[0] + rec[1] * rrows) if ratio > 0 else 0.0)
                    c = pc + extra * 1e-6
                    ov = min(c, pg)
                    dry.append([step, layer, c, 0.0, 1e6, pc, pg, rrows])
                    wet.append([step, layer, c + cs * ov, pg + gs * ov, 1e6, pc, pg, rrows])
            for mode, samples in (("wet", wet), ("dry", dry)):
                rows.append(
                    {
                        "op": "step_probe",
                        "size": float(B),
                        "family": "llama",
                        "model": "llama-7b",
                        "ratio": ratio,
                        "mode": mode,
                        "seconds": 0.0,
                        "fields": list(FIELDS),
                        "samples": samples,
                    }
                )
    return rows


def test_the_section_recovers_known_terms():
    sec = step_probe_section(_synthetic(11.0, 0.75, (4.0, 0.02), 0.3, 0.1))
    assert sec is not None
    assert sec["decode_layer_us"]["llama/spill"] == pytest.approx([11.0, 0.75], abs=1e-3)
    assert sec["recompute_layer_us"]["llama"] == pytest.approx([4.0, 0.02], abs=1e-3)
    assert sec["compute_slowdown"] == pytest.approx(0.3) and sec["gather_slowdown"] == pytest.approx(0.1)
    assert step_probe_section([{"op": "launch", "size": 1.0, "seconds": 1e-6}]) is None


def test_the_profile_takes_the_probed_terms_over_the_stand_ins():
    path = ROOT / "hardware_profiles" / "h100-80gb-measured.measurements.json"
    rows = [r for r in json.loads(path.read_text()) if r["op"] != "step_probe"]
    meta = {"date": "2026-12-06", "quick": False}
    dev = {"name": "H100", "memory_bytes": 85e9, "host_memory_bytes": 135e9}
    old = HardwareProfile(**build_profile(rows, "stand-ins", dev, meta))
    p = build_profile(rows + _synthetic(11.0, 0.75, (4.0, 0.02), 0.3, 0.1), "probed", dev, meta)
    hw = HardwareProfile(**p)
    assert hw.decode_layer_us["llama/spill"] == pytest.approx((11.0, 0.75), abs=1e-3)
    assert hw.recompute_layer_us["llama"] == pytest.approx((4.0, 0.02), abs=1e-3)
    assert hw.zero_copy.compute_slowdown == pytest.approx(0.3) and hw.zero_copy.gather_slowdown == pytest.approx(0.1)
    # the other family and layouts keep the stand-ins' values, which the fits record
    assert hw.decode_layer_us["opt/spill"] == pytest.approx(old.decode_layer_us["opt/spill"])
    assert hw.decode_layer_us["llama/slots"] == pytest.approx(old.decode_layer_us["llama/slots"])
    stand_in = p["meta"]["fits"]["step_probe"]["stand_in"]
    assert stand_in["decode_layer_us"]["llama/spill"] == pytest.approx(list(old.decode_layer_us["llama/spill"]))
    # these measurements carry no stand-in slowdown probe: none is recorded, not a zero
    assert stand_in["zero_copy"] == {"compute_slowdown": None, "gather_slowdown": None}
    assert p["meta"]["fits"]["step_probe"]["samples"] > 0
