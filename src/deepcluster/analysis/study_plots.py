"""Figures of a study: small PNGs drawn with :mod:`deepcluster.core.plot` (Agg figures outside
pyplot's global state, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from deepcluster.core.plot import new_figure, save_png

W, H = 5, 3.5  # inches, at core.plot's 100 dpi


def _axes():
    fig = new_figure(W, H, layout=None)
    return fig, fig.add_subplot()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label(v: Any) -> str:
    if v is None:
        return "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _metric_label(metric: dict[str, Any]) -> str:
    return f"accuracy ({metric['protocol']} probe, {metric['layer']})"


def plot_metric_by_value(trials: list[dict[str, Any]], key: str, values: list[Any], path: Path,
                         metric: dict[str, Any], *, y: str = "accuracy", x_label: str | None = None,
                         title: str | None = None) -> Path | None:
    """One trial per point, per value of ``key``, with the median and IQR drawn over them.

    Numeric values are placed on a numeric axis, logarithmic when they span more than a decade
    (k: 5 … 500); anything else (``off``, strings) gets one box per value.
    """
    points = [(t[key], t[y]) for t in trials if key in t and t.get(y) is not None]
    if not points:
        return None
    fig, ax = _axes()
    rng = np.random.default_rng(0)
    numeric = all(_is_number(v) for v in values)
    log = numeric and min(values) > 0 and max(values) / min(values) > 10
    if numeric:
        for v in values:
            ys = np.asarray([a for b, a in points if b == v])
            if ys.size == 0:
                continue
            jitter = np.exp(rng.uniform(-0.04, 0.04, ys.size)) if log else 1 + rng.uniform(-0.01, 0.01, ys.size)
            ax.scatter(v * jitter, ys, s=14, alpha=0.6, color="tab:blue")
            q1, med, q3 = np.percentile(ys, [25, 50, 75])
            ax.errorbar([v], [med], yerr=[[med - q1], [q3 - med]], fmt="s", color="black", capsize=4, ms=5)
        meds = [(v, float(np.median([a for b, a in points if b == v]))) for v in values if any(b == v for b, _ in points)]
        ax.plot([m[0] for m in meds], [m[1] for m in meds], color="black", lw=0.8, alpha=0.6)
        if log:
            ax.set_xscale("log")
        ax.set_xticks(values)
        ax.set_xticklabels([_label(v) for v in values])
        ax.minorticks_off()
    else:
        data = [[a for b, a in points if b == v] for v in values]
        pos = [i for i, d in enumerate(data) if d]
        ax.boxplot([data[i] for i in pos], positions=pos, widths=0.5, showfliers=False)
        for i in pos:
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(data[i])), data[i], s=14, alpha=0.6, color="tab:blue")
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([_label(v) for v in values])
    ax.set_xlabel(x_label or key)
    ax.set_ylabel(_metric_label(metric) if y == "accuracy" else y)
    ax.set_title(title or f"{y} vs {key} (median, IQR)", fontsize=10)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_ia_vs_accuracy(trials: list[dict[str, Any]], path: Path, metric: dict[str, Any],
                        spearman: dict[str, float] | None) -> Path | None:
    """Each trial's IA against its accuracy, coloured by setting; Spearman's ρ in the title."""
    pts = [t for t in trials if t.get("ia") is not None]
    if not pts:
        return None
    fig, ax = _axes()
    settings = list(dict.fromkeys(t["setting"] for t in pts))
    cmap = matplotlib.colormaps["viridis"].resampled(max(len(settings), 2))
    for i, s in enumerate(settings):
        sub = [t for t in pts if t["setting"] == s]
        ax.scatter([t["ia"] for t in sub], [t["accuracy"] for t in sub], s=18, color=cmap(i), label=s)
    if len(settings) <= 10:
        ax.legend(fontsize=7, frameon=False)
    title = "IA vs accuracy"
    if spearman is not None:
        title += f": Spearman ρ = {spearman['rho']:.2f} (p = {spearman['p']:.2g}, n = {spearman['n']})"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("initial alignment (NMI of k-means on the random network)")
    ax.set_ylabel(_metric_label(metric))
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_median_ia_vs_accuracy(settings: list[dict[str, Any]], path: Path, metric: dict[str, Any]) -> Path | None:
    """Per setting: median IA (its distribution when computed) against median accuracy, labelled."""
    rows = []
    for r in settings:
        ia = r.get("ia_dist_median") if r.get("ia_dist_median") is not None else r.get("ia_median")
        if ia is not None and r.get("accuracy_median") is not None:
            rows.append((r, ia))
    if not rows:
        return None
    fig, ax = _axes()
    for r, ia in rows:
        q1 = r.get("ia_dist_q1") if r.get("ia_dist_median") is not None else r.get("ia_q1")
        q3 = r.get("ia_dist_q3") if r.get("ia_dist_median") is not None else r.get("ia_q3")
        ax.errorbar([ia], [r["accuracy_median"]],
                    xerr=[[ia - q1], [q3 - ia]], yerr=[[r["accuracy_median"] - r["accuracy_q1"]],
                                                       [r["accuracy_q3"] - r["accuracy_median"]]],
                    fmt="o", ms=5, capsize=3, color="tab:blue", alpha=0.8)
        ax.annotate(r["setting"], (ia, r["accuracy_median"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("median IA (IQR)")
    ax.set_ylabel(f"median {_metric_label(metric)}")
    ax.set_title("median IA vs median accuracy per setting", fontsize=10)
    ax.grid(alpha=0.3)
    return save_png(fig, path)
