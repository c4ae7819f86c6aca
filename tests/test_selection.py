"""Selection policies on a tiny random model: budgets, windows, sinks, eviction."""

from __future__ import annotations

import itertools
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from alisa.accuracy.evaluate import evaluate  # noqa: E402
from alisa.accuracy.models import load  # noqa: E402
from alisa.kernels.selection import POLICIES, LayerSelector, PolicySpec, budget_tokens, split_window  # noqa: E402
from alisa.runtime.decoder import Decoder  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    model, _ = load("tiny-llama")
    return Decoder.from_hf(model)


def test_budget_one_equals_dense_exactly(tiny):
    ids = torch.randint(0, 256, (60,), generator=torch.Generator().manual_seed(1))
    # one row per run: rows of one batch may round differently in batched matmuls
    ref, _ = evaluate(tiny, ids, [PolicySpec("dense")], prefill=8)
    for p in POLICIES[1:]:
        rows, _ = evaluate(tiny, ids, [PolicySpec(p, 1.0)], prefill=8)
        assert rows[0].nll_sum == ref[0].nll_sum, p
        assert rows[0].recall == pytest.approx(1.0)
    both, _ = evaluate(tiny, ids, [PolicySpec("dense"), PolicySpec("swa", 1.0)], prefill=8)
    assert both[1].agreement == 1.0


def _run_masks(spec, steps=40, H=2, seed=0):
    """Drive one selector with random attention; return the masks it produced."""
    g = torch.Generator().manual_seed(seed)
    sel = LayerSelector([spec], H, steps + 10)
    masks = []
    for n in range(10, 10 + steps):
        m = sel.mask(n)
        masks.append(m[0].clone())
        w = torch.rand(1, H, n, generator=g) ** 4 * m
        sel.observe(w / w.sum(-1, keepdim=True))
    return masks


@pytest.mark.parametrize("name", ["local", "streaming", "h2o", "swa"])
@pytest.mark.parametrize("budget", [0.1, 0.3, 0.5])
def test_each_policy_returns_its_budget_and_keeps_its_window(name, budget):
    spec = PolicySpec(name, budget)
    for i, m in enumerate(_run_masks(spec)):
        n = 10 + i
        k = budget_tokens(budget, n)
        assert (m.sum(-1) == k).all(), (name, n)
        w = split_window(k, spec.local_fraction) if name in ("h2o", "swa") else None
        if name == "local":
            assert m[:, n - k :].all()
        elif name == "streaming":
            sinks = min(4, k - 1)
            assert m[:, :sinks].all() and m[:, n - (k - sinks) :].all()
        else:
            assert m[:, n - w :].all()  # the recent window is always attended


def test_h2o_never_readmits_while_swa_can():
    h2o = _run_masks(PolicySpec("h2o", 0.3), steps=60)
    for prev, cur in itertools.pairwise(h2o):
        n = prev.shape[-1]
        evicted = ~prev & (torch.arange(n) < n - 1)  # left out before (the new token aside)
        assert not (cur[:, :n] & evicted).any()
    swa = _run_masks(PolicySpec("swa", 0.3), steps=60)
    readmitted = 0
    for i in range(2, len(swa)):
        n = swa[i - 2].shape[-1]
        seen_out = ~swa[i - 1][:, :n] & swa[i - 2][:, :n]
        readmitted += int((swa[i][:, :n] & seen_out).sum())
    assert readmitted > 0


def test_swa_importance_is_the_sum_over_the_last_k_steps():
    spec = PolicySpec("swa", 0.5, history=3)
    sel = LayerSelector([spec], 1, 50)
    g = torch.Generator().manual_seed(3)
    hist = []
    for n in range(5, 20):
        sel.mask(n)
        w = torch.rand(1, 1, n, generator=g).half().float()
        sel.observe(w)
        hist.append(w)
    want = torch.zeros(50)
    for w in hist[-3:]:
        want[: w.shape[-1]] += w[0, 0]
    assert torch.allclose(sel.score[0, 0], want, atol=1e-5)


def test_unknown_policy_and_bad_budget():
    with pytest.raises(ValueError):
        PolicySpec("magic", 0.5)
    with pytest.raises(ValueError):
        PolicySpec("swa", 1.5)
    assert math.isclose(budget_tokens(0.2, 100), 20)


def test_observe_prefill_equals_step_by_step():
    specs = [PolicySpec("h2o", 0.3), PolicySpec("swa", 0.3), PolicySpec("swa", 0.5, history=4)]
    P = 24
    w = torch.rand(3, 2, P, P, generator=torch.Generator().manual_seed(5)).tril()
    a, b = LayerSelector(specs, 2, 64), LayerSelector(specs, 2, 64)
    a.observe_prefill(w)
    for i in range(P):
        b.observe(w[:, :, i, : i + 1])
    assert torch.allclose(a.acc, b.acc, atol=1e-5) and torch.allclose(a.score, b.score, atol=1e-3)
    for n in range(P, P + 6):  # and they go on alike
        assert torch.equal(a.mask(n), b.mask(n))
        x = torch.rand(3, 2, n, generator=torch.Generator().manual_seed(n))
        a.observe(x)
        b.observe(x)
    assert torch.allclose(a.score, b.score, atol=1e-3)
