"""The accuracy study's outputs: a CSV, a JSON record and a perplexity-vs-budget plot."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from alisa.sim.atomic import write_bytes, write_text

from .evaluate import RowMetrics

FIELDS = ("policy", "budget", "perplexity", "top1_agreement", "attention_recall", "tokens_scored")


def rows_as_dicts(rows: list[RowMetrics]) -> list[dict[str, Any]]:
    return [
        {
            "policy": r.spec.name,
            "budget": r.spec.budget,
            "perplexity": r.perplexity,
            "top1_agreement": r.agreement,
            "attention_recall": r.recall,
            "tokens_scored": r.count,
        }
        for r in rows
    ]


def table(rows: list[dict[str, Any]]) -> str:
    out = [f"{'policy':10s} {'budget':>6s} {'perplexity':>11s} {'top-1 agree':>11s} {'attn recall':>11s}"]
    for r in rows:
        out.append(
            f"{r['policy']:10s} {r['budget']:6.2f} {r['perplexity']:11.3f} {r['top1_agreement']:11.3f} "
            f"{r['attention_recall']:11.3f}"
        )
    return "\n".join(out)


def plot_png(rows: list[dict[str, Any]], title: str) -> bytes:
    import matplotlib.pyplot as plt

    from alisa.sim.plots import png_bytes

    fig, ax = plt.subplots(figsize=(6.5, 4))
    dense = [r for r in rows if r["policy"] == "dense"]
    for name in dict.fromkeys(r["policy"] for r in rows if r["policy"] != "dense"):
        pts = sorted((r["budget"], r["perplexity"]) for r in rows if r["policy"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if dense:
        ax.axhline(dense[0]["perplexity"], color="k", ls="--", lw=1, label="dense")
    ax.set_xlabel("KV budget (share of cached tokens attended)")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def write_report(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    png = plot_png(rows, f"{meta['model']}, {meta['tokens']} tokens ({meta['text']})")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "accuracy.csv", buf.getvalue())
    write_text(out / "accuracy.json", json.dumps({**meta, "rows": rows}, indent=1))
    write_bytes(out / "accuracy.png", png)
