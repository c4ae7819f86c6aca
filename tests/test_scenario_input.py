"""Bad input: one clear message naming file, field and reason; exit code 2; no traceback."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import pytest

from alisa.cli import main
from alisa.sim.errors import InputError
from alisa.sim.scenario import expand_sweep, load_scenario

GOOD = {
    "name": "x",
    "model": "opt-6.7b",
    "hardware": "v100-32gb",
    "workload": {"batch_size": 4, "prompt_len": 64, "gen_len": 16},
    "policy": {"name": "alisa", "gpu_kv_budget_gb": 2},
}


def _with(path: str, value):
    d = copy.deepcopy(GOOD)
    node: Any = d
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    return d


@pytest.mark.parametrize(
    "data, field, words",
    [
        (_with("workload.batch_sise", 3), "workload.batch_sise", "unknown field"),
        (_with("workload.batch_size", "many"), "workload.batch_size", "integer"),
        (_with("workload.batch_size", 0), "workload.batch_size", "greater than 0"),
        (_with("workload.prompt_len", -5), "workload.prompt_len", "greater than 0"),
        (_with("model", "gpt-17"), "model", "unknown model"),
        (_with("hardware", "tpu-v9"), "hardware", "unknown hardware profile"),
        (_with("policy.name", "magic"), "policy.name", "unknown policy"),
        (_with("policy.kv_sparsity", 1.5), "policy.kv_sparsity", "less than 1"),
        (
            {**GOOD, "policy": {"name": "dense-gpu", "kv_sparsity": 0.8}},
            "policy.kv_sparsity",
            "not a parameter of policy 'dense-gpu'",
        ),
        (
            _with("model", "opt-66b")
            | {
                "hardware": {
                    **__import__("alisa.sim.hardware", fromlist=["x"]).profile_config("l4"),
                    "cpu_memory_gb": 64,
                }
            },
            "model",
            "exceed GPU + CPU memory",
        ),
    ],
)
def test_bad_scenarios_name_file_field_reason(write_yaml, data, field, words):
    p = write_yaml(data)
    with pytest.raises(InputError) as ei:
        load_scenario(p)
    e = ei.value
    assert e.file == str(p)
    assert e.field == field
    assert words in e.reason


def test_malformed_yaml_names_line(write_yaml):
    p = write_yaml("name: x\nworkload: {batch_size: 4,\n  prompt_len: [\n")
    with pytest.raises(InputError) as ei:
        load_scenario(p)
    assert "malformed YAML" in ei.value.reason and "line" in ei.value.reason


def test_sweep_over_missing_field(write_yaml):
    p = write_yaml({**GOOD, "sweep": {"workload.batch": [1, 2]}})
    with pytest.raises(InputError) as ei:
        expand_sweep(p)
    assert ei.value.field == "sweep.workload.batch" and "missing field" in ei.value.reason


def test_set_override_is_validated(write_yaml):
    p = write_yaml(GOOD)
    with pytest.raises(InputError) as ei:
        load_scenario(p, ["hardware.pcie_h2d_gbps=-3"])
    assert ei.value.field == "hardware.pcie_h2d_gbps"
    sc = load_scenario(p, ["hardware.pcie_h2d_gbps=25", "workload.batch_size=32", "model.num_layers=2"])
    assert sc.hardware.pcie_h2d_gbps == 25 and sc.workload.batch_size == 32 and sc.model.num_layers == 2


def test_cli_exit_code_2_no_traceback_no_output(write_yaml, tmp_path, capsys):
    p = write_yaml(_with("workload.batch_size", 0))
    out = tmp_path / "out"
    assert main(["run", str(p), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(p) in err and "workload.batch_size" in err
    assert not out.exists()


def test_cli_subprocess_missing_file(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "alisa.cli", "run", str(tmp_path / "nope.yaml")], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "does not exist" in r.stderr


def test_cli_run_writes_all_outputs(write_yaml, tmp_path, capsys):
    p = write_yaml(GOOD)
    out = tmp_path / "o"
    assert main(["run", str(p), "--out", str(out)]) == 0
    names = {f.name for f in out.iterdir()}
    assert {"result.json", "steps.csv", "trace.json", "memory.png", "step_time.png"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    r = json.loads((out / "result.json").read_text())
    for k in (
        "schema_version",
        "scenario",
        "policy",
        "oom",
        "oom_reason",
        "tokens_generated",
        "throughput_tokens_per_s",
        "total_time_s",
        "prefill_time_s",
        "decode_time_s",
        "phases",
        "peak_gpu_bytes",
        "peak_cpu_bytes",
        "h2d_bytes",
        "d2h_bytes",
        "recomputed_tokens",
        "sim_wall_s",
    ):
        assert k in r
    tr = json.loads((out / "trace.json").read_text())
    lanes = {e["args"]["name"] for e in tr["traceEvents"] if e.get("name") == "thread_name"}
    assert {"GPU compute", "H2D", "D2H", "CPU"} <= lanes
    assert any(e.get("ph") == "X" for e in tr["traceEvents"])
    rows = (out / "steps.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + GOOD["workload"]["gen_len"] - 1


def test_outputs_get_the_modes_open_would_give(write_yaml, tmp_path):
    """Written through temp files (private by default), outputs still end up with the
    process's umask applied to 0666 / 0777, as plain open() and mkdir() would."""
    import os

    old = os.umask(0o027)
    try:
        out = tmp_path / "new" / "o"  # a new folder (built aside, renamed in)
        assert main(["run", str(write_yaml(GOOD)), "--out", str(out), "--no-plots"]) == 0
        assert main(["run", str(write_yaml(GOOD)), "--out", str(out), "--no-plots"]) == 0  # files replaced
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o750
    assert {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()} == dict.fromkeys(
        ("result.json", "steps.csv", "trace.json"), 0o640
    )


def test_cli_sweep(write_yaml, tmp_path):
    p = write_yaml({**GOOD, "sweep": {"workload.batch_size": [2, 4], "policy.kv_sparsity": [0.5, 0.8]}})
    out = tmp_path / "sw"
    assert main(["sweep", str(p), "--out", str(out), "--jobs", "2"]) == 0
    lines = (out / "sweep.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 4
    assert lines[0].startswith("param:workload.batch_size,param:policy.kv_sparsity")


def test_bundled_listing(capsys):
    assert main(["scenarios"]) == 0
    assert "default" in capsys.readouterr().out
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for n in ("v100-32gb", "a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb", "rtx-4090", "l4"):
        assert n in out


def test_sweep_over_policies_draws_grouped_bars_and_survives_a_bad_point(write_yaml, tmp_path):
    import json as _json

    p = write_yaml(
        {
            **GOOD,
            "sweep": {
                "policy": [
                    {"name": "alisa", "gpu_kv_budget_gb": 2},
                    {"name": "dense-gpu"},
                    {"name": "flexgen", "gpu_batch_size": 3},
                ]
            },
        }
    )
    out = tmp_path / "sw"
    assert main(["sweep", str(p), "--out", str(out), "--jobs", "1"]) == 0
    assert (out / "sweep.png").stat().st_size > 0
    res = _json.loads((out / "sweep.json").read_text())
    assert [r["policy"] for r in res] == ["alisa", "dense-gpu", "flexgen"]
    assert res[2]["oom"] and "does not divide" in res[2]["oom_reason"]  # a bad point is a row, not a crash
