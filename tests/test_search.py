"""alisa search: a seeded search whose winner `alisa run` reproduces; constraints hold;
bad specifications are one line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from alisa.cli import main
from alisa.sim.runner import simulate
from alisa.sim.scenario import load_scenario
from alisa.sim.search import Constraint, Trial, pareto_front, parse_constraint, parse_knob

pytest.importorskip("optuna")

FREE = [
    "--free=workload.batch_size=int:4:48:log",
    "--free=policy=choice:alisa,flexgen",
    "--free=policy.kv_sparsity=float:0.5:0.95",
    "--free=policy.int8_kv=bool",
]


def _search(tmp_path, *extra: str) -> tuple[int, dict, str]:
    out = tmp_path / "search"
    code = main(
        [
            "search",
            "default",
            "--set=workload.gen_len=64",
            "--trials",
            "16",
            "--jobs",
            "1",
            "--out",
            str(out),
            *FREE,
            *extra,
        ]
    )
    best = json.loads((out / "best.json").read_text()) if (out / "best.json").exists() else {}
    return code, best, str(out)


def test_the_winner_reproduces_and_meets_its_constraint(tmp_path, capsys):
    code, best, out = _search(tmp_path, "--constraint=token_latency_ms<=30")
    assert code == 0 and best, capsys.readouterr().err[-500:]
    assert best["token_latency_ms"] <= 30
    winner = load_scenario(f"{out}/winner.yaml")
    result, _ = simulate(winner)
    assert result["throughput_tokens_per_s"] == pytest.approx(best["throughput_tokens_per_s"], rel=1e-12)
    # the best feasible trial is the best row of trials.csv that meets the constraint
    import csv

    with open(f"{out}/trials.csv") as f:
        rows = list(csv.DictReader(f))
    ok = [float(r["throughput_tokens_per_s"]) for r in rows if r["feasible"] == "True"]
    assert max(ok) == pytest.approx(best["throughput_tokens_per_s"])
    assert all(float(r["token_latency_ms"]) > 30 for r in rows if r["feasible"] == "False" and r["token_latency_ms"])
    # the policy's own knobs only where it has them: flexgen trials draw no kv_sparsity
    assert all(not r.get("knob:policy.kv_sparsity") for r in rows if r["knob:policy"] == "flexgen")


def test_same_seed_same_search(tmp_path):
    _, a, _ = _search(tmp_path / "a")
    _, b, _ = _search(tmp_path / "b")
    assert a == b


def test_pareto_front_by_hand():
    def t(n, thr, lat):
        return Trial(n, {}, result={"throughput_tokens_per_s": thr, "token_latency_s": lat, "oom": False})

    trials = [t(0, 100, 0.01), t(1, 200, 0.02), t(2, 150, 0.03), t(3, 300, 0.05), t(4, 300, 0.06)]
    assert [x.number for x in pareto_front(trials)] == [0, 1, 3]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--free=workload.batch_size=int:8"], "is not a knob"),
        (["--free=workload.batch_size=int:64:8"], "must rise"),
        (["--free=workload.batch_size=float:0:8:log"], "be positive"),
        (["--constraint=memory<=3"], "unknown metric"),
        (["--constraint=peak_gpu_gb<3"], "METRIC<=VALUE"),
        (["--objective=speed"], "invalid choice"),
    ],
)
def test_bad_specifications_exit_2(tmp_path, capsys, argv, words):
    try:
        code = main(["search", "default", "--out", str(tmp_path / "o"), "--trials", "2", FREE[0], *argv])
    except SystemExit as e:  # argparse's own choice check
        code = e.code
    assert code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_nothing_free_is_exit_2(tmp_path, capsys):
    assert main(["search", "default", "--out", str(tmp_path / "o")]) == 2
    assert "nothing to search" in capsys.readouterr().err


def test_optuna_missing_is_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["search", "default", "--out", str(tmp_path / "o"), *FREE]) == 2
    assert "pip install -e '.[search]'" in capsys.readouterr().err


def test_knob_and_constraint_parsing():
    assert parse_knob("a", {"int": [1, 8], "log": True}, "f").log
    assert parse_knob("policy", "choice:alisa,vllm", "f").choices == ({"name": "alisa"}, {"name": "vllm"})
    assert parse_constraint("peak_gpu_gb<=80") == Constraint("peak_gpu_gb", "<=", 80.0)
    c = parse_constraint("throughput>=100")
    assert c.violation({"throughput_tokens_per_s": 150.0}) < 0 < c.violation({"throughput_tokens_per_s": 50.0})


def test_search_section_in_the_scenario(tmp_path, write_yaml):
    data = yaml.safe_load(Path("scenarios/default.yaml").read_text())
    data["workload"]["gen_len"] = 32
    data["search"] = {
        "trials": 6,
        "free": {"workload.batch_size": {"int": [4, 32]}},
        "constraints": ["peak_gpu_gb<=40"],
    }
    p = write_yaml(data)
    assert main(["search", str(p), "--jobs", "1", "--out", str(tmp_path / "s")]) == 0
    best = json.loads((tmp_path / "s" / "best.json").read_text())
    assert best["peak_gpu_gb"] <= 40 and best["constraints"] == ["peak_gpu_gb<=40"]
