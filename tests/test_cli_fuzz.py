"""Property: whatever the input, `alisa run` and `alisa sweep` exit 0 or 2, never with a
traceback, and a failed command leaves no output folder.

Inputs are random bytes, random edits of a small valid scenario (values replaced, keys
dropped or added, sweeps over random fields) and random ``--set`` strings. Sizes drawn
as numbers stay small so that a valid draw simulates in well under a second; numbers in
random text are left out for the same reason (``--set workload.gen_len=99999999``
would be a valid, long run, not a bug).
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alisa.cli import main

BASE: dict[str, Any] = {
    "name": "fuzz",
    "model": "smollm2-135m",
    "hardware": "v100-32gb",
    "workload": {"batch_size": 2, "prompt_len": 16, "gen_len": 4},
    "policy": {"name": "alisa", "kv_sparsity": 0.5, "gpu_kv_budget_gb": 0.001},
}
PATHS = [
    "name",
    "model",
    "hardware",
    "workload",
    "workload.batch_size",
    "workload.prompt_len",
    "workload.gen_len",
    "policy",
    "policy.name",
    "policy.kv_sparsity",
    "policy.gpu_kv_budget_gb",
    "policy.recompute",
    "policy.int8_kv",
    "policy.gather",
    "policy.selection_trace",
    "hardware.pcie_h2d_gbps",
    "hardware.gpu_memory_gb",
    "model.num_layers",
    "model.hidden_size",
    "sweep",
    "seed",
    "output",
]
POLICIES = ["alisa", "dense-gpu", "flexgen", "vllm", "accelerate", "zero-inference", "h2o", "x"]

NO_DIGITS = st.text(alphabet=st.characters(blacklist_categories=("Nd", "Cs")), max_size=10)
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(),
    NO_DIGITS,
    st.sampled_from([*POLICIES, "opt-6.7b", "l4", "/dev/null", "../x", "a/b", ""]),
)
VALUE = st.recursive(
    LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(NO_DIGITS, inner, max_size=3)),
    max_leaves=6,
)
SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=not __import__("os").environ.get("FUZZ_EXAMPLES"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _put(d: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = d
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


@st.composite
def scenario_edits(draw: st.DrawFn) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["set", "drop", "add", "sweep"]))
        path = draw(st.sampled_from(PATHS))
        if kind == "set":
            _put(d, path, draw(VALUE))
        elif kind == "drop":
            d.pop(path.split(".")[0], None)
        elif kind == "add":
            _put(d, draw(NO_DIGITS) or "k", draw(VALUE))
        else:
            d["sweep"] = {draw(st.sampled_from([*PATHS, "x.y"])): draw(st.lists(LEAF, max_size=3))}
    return d


SET_EXPR = st.one_of(
    NO_DIGITS,
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(PATHS), st.one_of(NO_DIGITS, st.integers(-3, 300))),
)
SOURCE = st.one_of(st.binary(max_size=200).map(lambda b: ("bytes", b)), scenario_edits().map(lambda d: ("yaml", d)))


def _invoke(cmd: str, source: tuple[str, Any], sets: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "s.yaml"
        kind, data = source
        if kind == "bytes":
            f.write_bytes(data)
        else:
            f.write_text(yaml.safe_dump(data, allow_unicode=True))
        out = Path(tmp) / "out" / "o"
        argv = [cmd, str(f), "--out", str(out), *(f"--set={s}" for s in sets)]
        argv += ["--no-plots"] if cmd == "run" else ["--jobs", "1"]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's own usage errors
                code = e.code if isinstance(e.code, int) else 1
        text = err.getvalue()
        assert code in (0, 2), (argv, text)
        assert "Traceback" not in text
        if code == 2:
            lines = [ln for ln in text.splitlines() if ln.startswith("alisa: error:")]
            assert len(lines) == 1, text
            assert not (Path(tmp) / "out").exists(), f"a failed {cmd} left {list((Path(tmp) / 'out').rglob('*'))}"
        else:
            assert (out / ("result.json" if cmd == "run" else "sweep.csv")).is_file()


@SETTINGS
@given(source=SOURCE, sets=st.lists(SET_EXPR, max_size=3))
def test_run_never_tracebacks(source: tuple[str, Any], sets: list[str]) -> None:
    _invoke("run", source, sets)


@SETTINGS
@given(source=SOURCE, sets=st.lists(SET_EXPR, max_size=3))
def test_sweep_never_tracebacks(source: tuple[str, Any], sets: list[str]) -> None:
    _invoke("sweep", source, sets)
