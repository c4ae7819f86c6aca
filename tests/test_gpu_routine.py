"""The calibrate -> validate routine in its dry-run form (benchmarks/gpu_routine.py): the
points reach Phases II and III, the calls fit the device tool's limits, the generated
scenarios are valid, and the verdicts are right by hand."""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import pytest

from alisa.sim.scenario import expand_sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def routine():
    spec = importlib.util.spec_from_file_location("gpu_routine", ROOT / "benchmarks" / "gpu_routine.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_routine"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def the_plan(routine):
    return routine.plan("h100-80gb-measured")


def test_every_point_reaches_phases_two_and_three(the_plan):
    pts = the_plan["points"]
    assert sum(not p["off_matrix"] for p in pts) == 4 and sum(p["off_matrix"] for p in pts) >= 2
    for p in pts:
        _, p2, p3 = p["phases"]
        assert p2 > 0 and p3 > 0, p


def test_points_are_ones_the_real_backend_runs(routine, the_plan, monkeypatch, capsys):
    """A generation length whose SWA budget outgrows the point's GPU cache is never chosen
    (a lent H100's calibration once chose 1024 for the off-matrix LLaMA point: 282 tokens
    attended, 256 held, and the real backend refused the stage)."""
    for p in the_plan["points"]:
        assert routine.real_backend_refusal(p["case"], "h100-80gb-measured", p["gen"]) is None
    case = dict(routine.OFF_MATRIX[0])  # LLaMA-7B b24, prompt 384, 256 tokens of GPU cache
    why = routine.real_backend_refusal(case, "h100-80gb-measured", 1024)
    assert why is not None and "256 tokens" in why and "282" in why
    monkeypatch.setattr(routine, "GEN_CANDIDATES", (768, 1024))
    gen, _ = routine.choose_gen(routine.POLICIES["alisa-device"], case, "h100-80gb-measured")
    assert gen == 768  # the longest it runs, whether or not both phases reach 5 %
    monkeypatch.setattr(routine, "GEN_CANDIDATES", (1024,))
    with pytest.raises(SystemExit) as e:
        routine.choose_gen(routine.POLICIES["alisa-device"], case, "h100-80gb-measured")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "off-llama-7b-b24: no generation length" in err and len(err.splitlines()) == 1


def test_a_failed_point_leaves_the_other_stages_running(routine, the_plan, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(routine, "STASH", tmp_path / "no-stash")
    monkeypatch.setattr(routine, "plan", lambda profile: the_plan)
    monkeypatch.setattr(routine, "points", lambda profile: [routine.Point(**p) for p in the_plan["points"]])
    monkeypatch.setattr(routine, "_run_stage", lambda st, pts, profile, out: ran.append(st.name) or int(st.repeat == 1))
    rc = routine.run(tmp_path / "out", 2, "h100-80gb-measured", ["alisa-device-r1", "alisa-device-r2", "dense-gpu-r1"])
    assert rc == 1 and ran == ["alisa-device-r1", "alisa-device-r2", "dense-gpu-r1"]
    log = json.loads((tmp_path / "out" / "routine-call2.json").read_text())["log"]
    assert [e["rc"] for e in log] == [1, 0, 1]


def test_calls_fit_the_device_limits(routine, the_plan):
    assert the_plan["calls"][0][0]["family"] == "calibrate"
    assert all(est <= routine.CALL_LIMIT_S for est in the_plan["call_estimates_s"])
    assert the_plan["total_estimate_s"] <= 28 * 60
    names = [s["name"] for c in the_plan["calls"] for s in c]
    for fam in routine.POLICIES:
        assert f"{fam}-r1" in names and f"{fam}-r2" in names  # every point twice


def test_generated_scenarios_expand_to_the_points(routine, the_plan, tmp_path):
    pts = [routine.Point(**p) for p in the_plan["points"]]
    for fam in routine.POLICIES:
        f = routine.scenario_file(fam, pts, "h100-80gb-measured", tmp_path)
        got = expand_sweep(f)
        want = len(pts) if fam.startswith("alisa") else sum(not p.off_matrix for p in pts)
        assert len(got) == want
        assert all(sc.hardware.name == "h100-80gb-measured" for _, sc in got)


def test_verdicts_by_hand(routine):
    rows = [
        {
            "scenario": "a",
            "metric": "throughput_tokens_per_s",
            "error": "0.02",
            "real": "100",
            "real_min": "99",
            "real_max": "101",
        },
        {
            "scenario": "b",
            "metric": "throughput_tokens_per_s",
            "error": "0.06",
            "real": "100",
            "real_min": "95",
            "real_max": "103",
        },
        {
            "scenario": "c",
            "metric": "step_time_phase_II_s",
            "error": "-0.08",
            "real": "1.0",
            "real_min": "0.99",
            "real_max": "1.01",
        },
    ]
    v = routine._verdicts(rows, 2)
    assert v["points"]["a"]["throughput_tokens_per_s"]["verdict"] == "met"
    assert v["points"]["b"]["throughput_tokens_per_s"]["verdict"] == "within spread"  # 6% < 8% spread
    assert v["points"]["c"]["step_time_phase_II_s"]["verdict"] == "missed"


def test_run_takes_its_call_or_the_named_stages(routine, the_plan, tmp_path, monkeypatch):
    """A call runs its share of the plan; --only runs the named stages, in the order named,
    wherever the plan put them (a lease with less time left)."""
    ran = []
    monkeypatch.setattr(routine, "STASH", tmp_path / "no-stash")  # never this machine's /tmp
    monkeypatch.setattr(routine, "plan", lambda profile: the_plan)
    monkeypatch.setattr(routine, "points", lambda profile: [routine.Point(**p) for p in the_plan["points"]])
    monkeypatch.setattr(routine, "_run_stage", lambda st, pts, profile, out: ran.append(st.name))
    routine.run(tmp_path / "o2", 2, "h100-80gb-measured")
    assert ran == [s["name"] for s in the_plan["calls"][1]]
    ran.clear()
    routine.run(tmp_path / "o", 3, "h100-80gb-measured", only=["flexgen-r2", "no-such-stage", "alisa-device-r1"])
    assert ran == ["flexgen-r2", "alisa-device-r1"]  # in the order named
    log = (tmp_path / "o" / "routine-call3.json").read_text()
    assert "flexgen-r2" in log


def test_a_later_call_finds_call_ones_profile_in_the_stash(routine, tmp_path, monkeypatch):
    """Call 1's calibration (stashed on the machine) is what later calls plan with, also
    when the tree carries an older profile of the same name (the 2026-12-06 routine's
    calls 2 and 3 planned with the tree's older calibration before this)."""
    stash, root = tmp_path / "stash", tmp_path / "repo"
    stash.mkdir()
    (root / "hardware_profiles").mkdir(parents=True)
    (root / "hardware_profiles" / "gpu-x-measured.yaml").write_text("older calibration")
    for suffix in (".yaml", ".measurements.json"):
        (stash / f"gpu-x-measured{suffix}").write_text("x")
    monkeypatch.setattr(routine, "STASH", stash)
    monkeypatch.setattr(routine, "ROOT", root)
    monkeypatch.setattr(routine, "profile_names", lambda: [p.stem for p in (root / "hardware_profiles").glob("*.yaml")])
    monkeypatch.setattr(routine, "plan", lambda profile: {"calls": [[], []]})
    monkeypatch.setattr(routine, "points", lambda profile: [])
    assert routine.run(tmp_path / "o", 2, "gpu-x-measured") == 0
    assert sorted(p.name for p in (root / "hardware_profiles").iterdir()) == [
        "gpu-x-measured.measurements.json",
        "gpu-x-measured.yaml",
    ]
    assert (root / "hardware_profiles" / "gpu-x-measured.yaml").read_text() == "x"
    with pytest.raises(SystemExit, match="copy call 1"):
        routine.run(tmp_path / "o", 2, "gpu-y-measured")  # neither in the tree nor stashed


def test_validate_unpacks_two_runs_per_point_and_judges_them(routine, the_plan, tmp_path, monkeypatch):
    """The CPU side end to end, on stand-in runs: the simulator's own outputs as run 1, and
    as run 2 with throughput 10 % higher. Against their median the simulator is ~4.8 % slow
    in throughput, beyond the 3 % target but inside the 10 % spread; the steps are exact."""
    import json
    import tarfile

    from alisa.cli import _point_label
    from alisa.sim.runner import run_scenario

    pts = [routine.Point(**p) for p in the_plan["points"]][:2]  # two points keep it short
    monkeypatch.setattr(routine, "points", lambda profile: pts)
    scen = routine.scenario_file("dense-gpu", pts, "h100-80gb-measured", tmp_path / "s")
    out = tmp_path / "out"
    out.mkdir()
    for rep in (1, 2):
        runs = tmp_path / f"runs{rep}"
        for params, sc in expand_sweep(scen):
            d = runs / _point_label(sc.name, params) / "real"
            run_scenario(sc, d, plots=False)
            if rep == 2:
                r = json.loads((d / "result.json").read_text())
                r["throughput_tokens_per_s"] *= 1.1
                (d / "result.json").write_text(json.dumps(r))
        with tarfile.open(out / f"dense-gpu-r{rep}.tgz", "w:gz") as tf:
            tf.add(runs, arcname=".")
    rep = routine.validate([out], "h100-80gb-measured")
    fam = rep["families"]["dense-gpu"]
    assert set(rep["families"]) == {"dense-gpu"} and fam["runs"] == 2
    assert len(fam["points"]) == 2
    for metrics in fam["points"].values():
        thr = metrics["throughput_tokens_per_s"]
        assert abs(thr["error"] - (1 / 1.05 - 1)) < 1e-3 and thr["verdict"] == "within spread"
        assert abs(thr["spread"] - 0.1 / 1.05) < 1e-3
        assert metrics["step_time_phase_I_s"]["verdict"] == "met"


def test_timing_sensitivity_retimes_the_same_plans(routine, the_plan, tmp_path):
    """benchmarks/debug/timing_sensitivity.py on stand-in runs (the simulator's own outputs
    on the profile): timed by that profile's file, or with a field set to its own value,
    every timing error is zero; a slower device gather makes the simulated run slower, so the
    throughput error turns negative."""
    from alisa.cli import _point_label
    from alisa.sim.hardware import load_profile, profile_path
    from alisa.sim.runner import run_scenario

    spec = importlib.util.spec_from_file_location(
        "timing_sensitivity", ROOT / "benchmarks" / "debug" / "timing_sensitivity.py"
    )
    assert spec and spec.loader
    ts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ts)
    pts = [routine.Point(**p) for p in the_plan["points"]][:1]
    scen = routine.scenario_file("alisa-device", pts, "h100-80gb-measured", tmp_path / "s")
    runs = tmp_path / "runs"
    for params, sc in expand_sweep(scen):
        run_scenario(sc, runs / _point_label(sc.name, params) / "real", plots=False)
    own = load_profile("h100-80gb-measured").zero_copy.gather_slowdown
    same = ts.sweep(str(scen), [runs], "hardware (timing profile)", [profile_path("h100-80gb-measured")])
    same.update(ts.sweep(str(scen), [runs], "hardware.zero_copy.gather_slowdown", [own, own + 0.5]))
    timed = (
        "throughput",
        "prefill",
        "step_time",
    )  # a real run's peak memory excludes the reserve; a stand-in's does not
    errs = {
        v: {r["metric"]: r["error"] for r in res["points"] if r["error"] is not None and r["metric"].startswith(timed)}
        for v, res in same.items()
    }
    for v in (str(profile_path("h100-80gb-measured")), str(own)):
        assert errs[v] and all(abs(e) < 1e-9 for e in errs[v].values()), {
            k: e for k, e in errs[v].items() if abs(e) >= 1e-9
        }
    assert errs[str(own + 0.5)]["throughput_tokens_per_s"] < -0.01


def test_validate_plans_each_stage_with_its_own_profile(routine, the_plan, tmp_path, monkeypatch):
    """Runs planned with an older calibration of the same GPU (same name, other fields) are
    simulated with that calibration's plans and timed with the lent GPU's (--timing); the
    archive says which profile planned it (or --planned-with, for archives without one).
    Without either, the planning profile is taken to be the timing one, and alisa validate
    refuses the runs by their profile fingerprint instead of comparing other plans."""
    from alisa.cli import _point_label
    from alisa.sim.hardware import load_profile
    from alisa.sim.runner import run_scenario

    older = ROOT / "benchmarks" / "results" / "validation-thirteenth" / "profile" / "h100-80gb-measured.yaml"
    fp_old = load_profile(str(older)).fingerprint()
    assert fp_old != load_profile("h100-80gb-measured").fingerprint()
    pts = [routine.Point(**p) for p in the_plan["points"]][:1]
    monkeypatch.setattr(routine, "points", lambda profile: pts)
    scen = routine.scenario_file("dense-gpu", pts, str(older), tmp_path / "s")
    runs = tmp_path / "runs"
    for params, sc in expand_sweep(scen):
        run_scenario(sc, runs / _point_label(sc.name, params) / "real", plots=False)
    bare, carrying = tmp_path / "bare", tmp_path / "carrying"
    for out, with_profile in ((bare, False), (carrying, True)):
        out.mkdir()
        with tarfile.open(out / "dense-gpu-r1.tgz", "w:gz") as tf:
            tf.add(runs, arcname=".")
            if with_profile:
                tf.add(older, arcname=routine.PLANNED_WITH)
    with pytest.raises(SystemExit, match="fingerprint"):
        routine.validate([bare], "h100-80gb-measured")
    for outs, rules in (([carrying], []), ([bare], [("dense-*", str(older))])):
        rep = routine.validate(outs, "h100-80gb-measured", rules)
        (key,) = rep["families"]
        assert key == f"dense-gpu@{fp_old[:8]}" and fp_old in rep["families"][key]["planned_with"]
        (metrics,) = rep["families"][key]["points"].values()
        # timed by the newer calibration, so not the older one's own (zero-error) answer
        assert abs(metrics["throughput_tokens_per_s"]["error"]) > 1e-4
    text = routine.render(rep)
    assert f"dense-gpu@{fp_old[:8]}" in text and "throughput" in text
