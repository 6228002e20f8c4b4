"""Plots of replay results: the quality-cost curve of a sweep (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_sweep(
    out: Path | str,
    learned: Sequence[Mapping[str, Any]],
    baseline: Sequence[Mapping[str, Any]],
    *,
    llm_quality: float | None,
    metric: str,
    title: str,
    default_point: Mapping[str, Any] | None = None,
    hindsight: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write a PNG of quality against the share of events sent to the LLM.

    ``learned`` and ``baseline`` are replay results (``llm_call_fraction`` and ``quality`` are
    read); the LLM alone is the point at share 1, with a band one point below it. ``hindsight``
    is a headroom curve (``llm_share`` and ``quality``, see :mod:`streamcascade.models.headroom`):
    what a policy after the first stage reaches when it knows where the stage errs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for points, style, name in ((learned, "o-", "learned deferral policy"),
                                (baseline, "s--", "static confidence threshold")):
        ordered = sorted(points, key=lambda p: p["llm_call_fraction"])
        ax.plot([p["llm_call_fraction"] for p in ordered], [p["quality"] for p in ordered], style,
                label=name, markersize=4)
    if hindsight:
        ax.plot([p["llm_share"] for p in hindsight], [p["quality"] for p in hindsight], "-",
                color="tab:green", lw=1, alpha=0.7, label="hindsight policy (headroom)")
    if llm_quality is not None:
        ax.plot([1.0], [llm_quality], "k*", markersize=12, label="LLM alone")
        ax.axhline(llm_quality - 0.01, color="grey", lw=0.8, ls=":", label="LLM − 1 point")
    if default_point is not None:
        ax.plot([default_point["llm_call_fraction"]], [default_point["quality"]], "D",
                color="tab:red", markersize=8, label="default operating point")
    ax.set_xlabel("share of events sent to the LLM (audits included)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.set_xlim(0, 1.05)
    if llm_quality is not None:  # keep the region around the LLM readable; far-off points clip
        ys = [p["quality"] for p in [*learned, *baseline]] + [llm_quality]
        ax.set_ylim(max(min(ys) - 0.02, llm_quality - 0.25), max(ys) + 0.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
