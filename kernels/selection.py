"""KV selection policies (torch reference): which cached tokens each decode step attends.

All policies share one interface, per layer, over a batch whose rows may run different
policies side by side (the accuracy study batches them):

* ``mask(n)`` -> bool [B, Hkv, n]: the tokens attended at this step (n cached tokens,
  the newest included);
* ``observe(weights)``: the attention weights this step gave each token, summed over the
  KV head's query heads ([B, Hkv, n]; zero off the mask).

Budgets are fractions of the cached tokens: k = ceil(budget * n) tokens per step.

* dense       every token.
* local       the k most recent tokens.
* streaming   StreamingLLM: the first `sinks` tokens plus the most recent k - sinks.
* h2o         H2O: a recent window (half of k) plus heavy hitters by attention accumulated
              over *all* steps; a token left out is evicted for good and never returns.
* swa         ALISA's SWA: a recent window of round(local_fraction * k) plus the earlier
              tokens with the highest importance, the attention they received summed over
              the last `history` steps (our default: the window length). Nothing is
              evicted: a token left out can be selected again.

Per-head selection is the default; with ``shared_heads`` a row picks one set for all
its KV heads from scores summed over heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POLICIES = ("dense", "local", "streaming", "h2o", "swa")


@dataclass(frozen=True)
class PolicySpec:
    name: str
    budget: float = 1.0
    local_fraction: float = 0.5  # swa: window share of the budget; h2o: recent share
    sinks: int = 4  # streaming
    history: int | None = None  # swa: steps of importance; None = the window length

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy '{self.name}'; known: {', '.join(POLICIES)}")
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget {self.budget} must lie in (0, 1]")

    @property
    def label(self) -> str:
        return "dense" if self.name == "dense" else f"{self.name}@{self.budget:g}"


def budget_tokens(budget: float, n: int) -> int:
    return n if budget >= 1.0 else max(1, min(n, math.ceil(budget * n - 1e-9)))


def split_window(k: int, local_fraction: float) -> int:
    """Window tokens of a budget of k (at least one: the newest token)."""
    return min(k, max(1, round(local_fraction * k)))


class LayerSelector:
    """Selection state of one layer for a batch of rows, each with its own PolicySpec."""

    def __init__(
        self,
        specs: list[PolicySpec],
        num_kv_heads: int,
        max_tokens: int,
        shared_heads: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        self.specs = specs
        self.H = num_kv_heads
        self.N = max_tokens
        self.shared = shared_heads
        B = len(specs)
        self.dev = torch.device(device)
        # H2O: accumulated attention over all steps; evicted tokens are marked dead
        self.acc = torch.zeros(B, self.H, max_tokens, device=self.dev)
        self.dead = torch.zeros(B, self.H, max_tokens, dtype=torch.bool, device=self.dev)
        # SWA: importance over the last `history` steps, kept exactly with a ring of
        # each step's contributions (fp16, added to the score as rounded so they cancel)
        self.swa_rows = [i for i, s in enumerate(specs) if s.name == "swa"]
        self.score = torch.zeros(B, self.H, max_tokens, device=self.dev)
        hist = [self._history(s, max_tokens) for s in specs if s.name == "swa"]
        self.ring_len = max(hist) if hist else 1
        self.ring = (
            torch.zeros(self.ring_len, len(self.swa_rows), self.H, max_tokens, dtype=torch.float16, device=self.dev)
            if self.swa_rows
            else None
        )
        self.lo = [0] * B  # first step still inside each swa row's history
        self.t = 0  # steps observed
        self.last_global: torch.Tensor | None = None  # [B, H, N] bool, for trace churn
        self._window = [1] * B

    @staticmethod
    def _history(spec: PolicySpec, n: int) -> int:
        if spec.history is not None:
            return max(1, spec.history)
        return split_window(budget_tokens(spec.budget, n), spec.local_fraction)

    # -- selection ---------------------------------------------------------------------
    def mask(self, n: int) -> torch.Tensor:
        B, H = len(self.specs), self.H
        m = torch.zeros(B, H, n, dtype=torch.bool, device=self.dev)
        for r, s in enumerate(self.specs):
            k = budget_tokens(s.budget, n)
            if s.name == "dense" or k >= n:
                m[r] = True
                self._window[r] = n
            elif s.name == "local":
                m[r, :, n - k :] = True
                self._window[r] = k
            elif s.name == "streaming":
                sinks = min(s.sinks, k - 1)
                m[r, :, :sinks] = True
                m[r, :, n - (k - sinks) :] = True
                self._window[r] = k - sinks
            elif s.name == "h2o":
                w = split_window(k, s.local_fraction)
                self._window[r] = w
                m[r] = self._h2o_keep(r, n, k, w)
            else:  # swa
                w = split_window(k, s.local_fraction)
                self._window[r] = w
                m[r, :, n - w :] = True
                g = k - w
                if g > 0:
                    cand = self.score[r, :, : n - w]
                    if self.shared:
                        top = cand.sum(0).topk(g).indices
                        m[r, :, top] = True
                    else:
                        top = cand.topk(g, dim=-1).indices
                        m[r].scatter_(-1, top, True)
        return m

    def _h2o_keep(self, r: int, n: int, k: int, w: int) -> torch.Tensor:
        """Alive tokens after evicting down to k: recent w, then highest accumulated."""
        alive = ~self.dead[r, :, :n]
        alive[:, n - w :] = True
        counts = alive.sum(-1)
        if int(counts.max()) > k:
            acc = self.acc[r, :, :n].clone()
            acc[:, n - w :] = math.inf  # the recent window is never evicted
            acc[~alive] = -math.inf
            if self.shared:
                keep_idx = acc.sum(0).topk(k).indices
                keep = torch.zeros(n, dtype=torch.bool, device=self.dev)
                keep[keep_idx] = True
                keep = keep.expand(self.H, n) & alive.all(0)
            else:
                keep = torch.zeros_like(alive)
                keep.scatter_(-1, acc.topk(k, dim=-1).indices, True)
                keep &= alive
            self.dead[r, :, :n] |= alive & ~keep  # evicted for good
            alive = keep
        return alive

    def window(self, row: int) -> int:
        """Window tokens of the last mask() for a row (its 'local' part)."""
        return self._window[row]

    # -- feedback -----------------------------------------------------------------------
    def observe_prefill(self, weights: torch.Tensor) -> None:
        """All P prompt positions at once: weights [B, H, P, P] (row i = query i, causal).
        Equivalent to observe() for each query position in order."""
        P = weights.shape[-1]
        self.acc[:, :, :P] += weights.sum(2)
        if self.ring is not None:
            rows = self.swa_rows
            w16 = weights[rows].to(torch.float16)  # [R, H, P, P]
            for j, r in enumerate(rows):
                hist = self._history(self.specs[r], P)
                lo = max(0, P - hist)
                self.score[r, :, :P] = w16[j, :, lo:P].float().sum(1)
                self.lo[r] = lo
            for i in range(max(0, P - self.ring_len), P):  # the slots later steps subtract
                self.ring[i % self.ring_len].zero_()
                self.ring[i % self.ring_len, :, :, :P] = w16[:, :, i]
        self.t += P

    def observe(self, weights: torch.Tensor) -> None:
        """weights [B, H, n]: attention each token received this step (summed over a KV
        head's query heads)."""
        n = weights.shape[-1]
        self.acc[:, :, :n] += weights
        if self.ring is not None:
            rows = self.swa_rows
            # first drop the steps that leave each row's history (before their slot is reused)
            for j, r in enumerate(rows):
                hist = self._history(self.specs[r], n)
                new_lo = max(0, self.t + 1 - hist)
                for step in range(self.lo[r], new_lo):
                    self.score[r] -= self.ring[step % self.ring_len, j].float()
                self.lo[r] = max(self.lo[r], new_lo)
            w16 = weights[rows].to(torch.float16)
            slot = self.t % self.ring_len
            self.ring[slot].zero_()
            self.ring[slot, :, :, :n] = w16
            self.score[rows, :, :n] += w16.float()
        self.t += 1
