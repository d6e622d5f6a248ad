"""Bar charts of the evaluation suite: one PNG per protocol, grouped bars per layer.

One panel per headline metric (the linear probe's last epoch, each k of kNN, each n of low-shot),
one colour per (run, checkpoint); the raw-pixel baseline is a dashed horizontal line. The linear
probe's best epoch is a black tick on its bar; low-shot bars carry their std over draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from deepcluster.core.plot import new_figure, save_png
from deepcluster.evaluate.tables import column_labels


def _panel_metrics(protocol: str, rows: list[dict[str, Any]]) -> list[str]:
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    if protocol == "linear":
        return [m for m in ("last_acc", "test_acc") if m in metrics]
    return metrics


def _panel_title(protocol: str, metric: str) -> str:
    if protocol == "linear":
        return "linear probe, last epoch (tick: best epoch)" if metric == "last_acc" else "linear probe (L-BFGS)"
    return f"{'kNN' if protocol == 'knn' else 'low-shot'}, {metric}"


def plot_protocol_bars(rows: list[dict[str, Any]], protocol: str, path: str | Path) -> Path | None:
    """Grouped bar chart of one protocol's rows.

    Parameters
    ----------
    rows : list[dict]
        Tidy rows of :func:`~deepcluster.evaluate.suite.evaluate_suite` (other protocols ignored).
    protocol : str
        Which protocol to draw.
    path : str or Path
        PNG file to write (atomically).

    Returns
    -------
    Path or None
        ``path``, or ``None`` when there is nothing to draw.
    """
    prows = [r for r in rows if r["protocol"] == protocol]
    if not prows:
        return None
    labels = column_labels(prows)
    bar_keys = [k for k in labels if k[1] != "pixels"]
    pixel_keys = [k for k in labels if k[1] == "pixels"]
    layers = list(dict.fromkeys(r["layer"] for r in prows if r["layer"] != "pixels"))
    metrics = _panel_metrics(protocol, prows)
    value = {(r["run_name"], r["checkpoint"], r["layer"], r["metric"]): r for r in prows}
    n_panels = len(metrics)
    cols = min(n_panels, 2)
    nrows = int(np.ceil(n_panels / cols))
    fig = new_figure(max(4.5, 1.1 * len(layers) * max(1, len(bar_keys)) ** 0.5 + 2) * cols, 3.4 * nrows, layout=None)
    axes = fig.subplots(nrows, cols, squeeze=False)
    width = 0.8 / max(1, len(bar_keys))
    x = np.arange(len(layers))
    colours = matplotlib.colormaps["tab10"]
    for ax, metric in zip(axes.ravel(), metrics):
        for i, key in enumerate(bar_keys):
            vals = [value.get((*key, layer, metric)) for layer in layers]
            heights = [100 * v["value"] if v else np.nan for v in vals]
            errs = [100 * (v.get("std") or 0.0) if v else 0.0 for v in vals]
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(pos, heights, width, yerr=errs if protocol == "lowshot" else None, capsize=2,
                   color=colours(i % 10), label=labels[key])
            if metric == "last_acc":
                best = [value.get((*key, layer, "best_acc")) for layer in layers]
                ax.scatter(pos, [100 * b["value"] if b else np.nan for b in best], marker="_", color="black",
                           s=120, zorder=3)
        for j, key in enumerate(pixel_keys):
            px = value.get((*key, "pixels", metric))
            if px:
                ax.axhline(100 * px["value"], color="grey", linestyle="--", linewidth=1,
                           label=labels[key] if j == 0 or len(pixel_keys) > 1 else None)
        ax.set_xticks(x, layers)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_panel_title(protocol, metric), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        lows = [100 * (r["value"] - (r.get("std") or 0.0)) for r in prows if r["metric"] == metric]
        highs = [100 * (r["value"] + (r.get("std") or 0.0)) for r in prows
                 if r["metric"] == metric or (metric == "last_acc" and r["metric"] == "best_acc")]
        if lows:
            ax.set_ylim(max(0.0, min(lows) - 5), min(100.0, max(highs) + 3))
    for ax in axes.ravel()[n_panels:]:
        ax.axis("off")
    handles, names = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.03 * ((len(names) - 1) // 4)))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_png(fig, path)


def write_bar_charts(rows: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """``probe_<protocol>.png`` in ``out_dir`` for every protocol of ``rows``; protocol → path."""
    out: dict[str, Path] = {}
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        path = plot_protocol_bars(rows, protocol, Path(out_dir) / f"probe_{protocol}.png")
        if path is not None:
            out[protocol] = path
    return out
