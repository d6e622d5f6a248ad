"""Training curves over DeepCluster cycles: loss, accuracy on pseudo-labels, NMI, time per phase."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepcluster.core.errors import DataError
from deepcluster.core.plot import label_colors, new_figure, save_png

# metrics.jsonl key → panel title
TRAINING_PANELS = {
    "loss": "Loss (pseudo-labels)",
    "train_acc": "Training accuracy (pseudo-labels)",
    "nmi_prev": "NMI(t-1, t): cluster stability",
    "nmi_labels": "NMI vs labels",
}
CYCLE_PANELS = {
    "nmi": "NMI vs labels",
    "ari": "ARI vs labels",
    "acc": "Accuracy vs labels (Hungarian)",
    "nmi_prev": "NMI(t-1, t)",
}
PHASES = ("features", "pca", "clustering", "training")


def _get(row: Any, key: str) -> Any:
    if isinstance(row, Mapping):
        return row.get(key)
    return getattr(row, key, None)


def _number(value: Any) -> float | None:
    """A finite float, or None for missing / None / NaN / non-numeric values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _series(rows: Sequence[Any], key: str) -> tuple[list[float], list[float]]:
    """(cycles, values) of the rows where ``key`` has a number; the cycle defaults to the 1-based row number."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        v = _number(_get(row, key))
        if v is None:
            continue
        c = _number(_get(row, "cycle"))
        xs.append(c if c is not None else float(i + 1))
        ys.append(v)
    return xs, ys


def _check_runs(runs: Mapping[str, Sequence[Any]], what: str) -> dict[str, list[Any]]:
    if not isinstance(runs, Mapping) or not runs:
        raise DataError(f"no {what} to draw: give a dict of run name → list of per-cycle records")
    out = {}
    for name, rows in runs.items():
        if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
            raise DataError(f"{what} of run {name!r} must be a list of per-cycle records, got {type(rows).__name__}")
        out[str(name)] = list(rows)
    return out


def _line_panels(axes: list[Any], runs: dict[str, list[Any]], panels: dict[str, str], colours: np.ndarray) -> None:
    for ax, (key, title) in zip(axes, panels.items()):
        for colour, (name, rows) in zip(colours, runs.items()):
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.4,
                        color=colour, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("cycle", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)


def _legend(fig: Any, axes: list[Any], n_runs: int) -> None:
    if n_runs > 1 and axes:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncol=min(n_runs, 4), fontsize=8, frameon=False)


def plot_training_curves(metrics: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Per-cycle training metrics of one or several runs (records of their ``metrics.jsonl``).

    Panels, each drawn only when some run has the key: loss, ``train_acc``, ``nmi_prev``
    (NMI between consecutive assignments), ``nmi_labels`` (NMI against the labels), then one
    stacked bar chart of the ``seconds`` per phase (features / pca / clustering / training) per
    run. Missing keys, None and NaN values are skipped.

    Parameters
    ----------
    metrics : mapping of str to list of dict
        Run name → its records, e.g. ``{"fmnist": RunFolder(p).metrics()}``.
    path : str or Path
        Output PNG.

    Returns
    -------
    Path
        ``path``, written atomically.

    Raises
    ------
    DataError
        When ``metrics`` is empty or not a mapping of record lists.
    """
    runs = _check_runs(metrics, "training metrics")
    panels = {key: title for key, title in TRAINING_PANELS.items()
              if any(_series(rows, key)[0] for rows in runs.values())}
    timed = {name: rows for name, rows in runs.items()
             if any(isinstance(_get(r, "seconds"), Mapping) and _get(r, "seconds") for r in rows)}
    n_panels = len(panels) + len(timed)
    if n_panels == 0:
        fig = new_figure(5, 1.5)
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no per-cycle metric recorded yet", ha="center", va="center", fontsize=10)
        return save_png(fig, path)

    ncols = min(3, n_panels)
    nrows = -(-n_panels // ncols)
    fig = new_figure(3.6 * ncols, 2.7 * nrows + (0.3 if len(runs) > 1 else 0))
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    colours = label_colors(len(runs))
    _line_panels(axes[: len(panels)], runs, panels, colours)
    phase_colours = label_colors(len(PHASES) + 1)[1:]  # not tab10's blue, used by the first run
    for ax, (name, rows) in zip(axes[len(panels):], timed.items()):
        _phase_bars(ax, rows, phase_colours)
        ax.set_title(f"Seconds per phase: {name}" if len(runs) > 1 else "Seconds per phase", fontsize=9)
    _legend(fig, axes[: len(panels)], len(runs))
    return save_png(fig, path)


def _phase_bars(ax: Any, rows: list[Any], colours: np.ndarray) -> None:
    """Stacked bars of the ``seconds`` dict per cycle; phases beyond :data:`PHASES` are summed as "other"."""
    timed = [(i, _get(row, "seconds")) for i, row in enumerate(rows) if isinstance(_get(row, "seconds"), Mapping)]
    cycles = []
    for i, _ in timed:
        c = _number(_get(rows[i], "cycle"))
        cycles.append(c if c is not None else float(i + 1))
    values = np.array([[_number(sec.get(p)) or 0.0 for p in PHASES]
                       + [sum(_number(v) or 0.0 for k, v in sec.items() if k not in PHASES)] for _, sec in timed])
    names = [*PHASES, "other"]
    colours = np.vstack([colours[: len(PHASES)], [[0.6, 0.6, 0.6, 1.0]]])
    bottom = np.zeros(len(cycles))
    width = 0.8 * (float(np.min(np.diff(np.unique(cycles)))) if len(set(cycles)) > 1 else 1.0)
    for j, name in enumerate(names):
        if not np.any(values[:, j]):
            continue
        ax.bar(cycles, values[:, j], bottom=bottom, width=width, color=colours[j], label=name, linewidth=0)
        bottom += values[:, j]
    ax.set_xlabel("cycle", fontsize=8)
    ax.set_ylabel("seconds", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(cycles):  # headroom, so the legend never hides the bars
        ax.set_ylim(0, float(bottom.max()) * 1.5 or 1.0)
    ax.legend(fontsize=7, loc="upper center", ncol=5, frameon=False, handlelength=1.0, columnspacing=0.8)


def plot_cycle_metrics(rows: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Clustering metrics per cycle, one line per run.

    Parameters
    ----------
    rows : mapping of str to list of dict
        Run name → one dict per cycle with keys ``cycle``, ``nmi``, ``ari``, ``acc`` (against
        the labels) and ``nmi_prev`` (against the previous cycle); any may be missing or None,
        and a panel is drawn for each key that some run has.
    path : str or Path
        Output PNG.

    Returns
    -------
    Path
        ``path``, written atomically.

    Raises
    ------
    DataError
        When ``rows`` is empty or not a mapping of record lists.
    """
    runs = _check_runs(rows, "cycle metrics")
    panels = {key: title for key, title in CYCLE_PANELS.items()
              if any(_series(r, key)[0] for r in runs.values())}
    if not panels:
        fig = new_figure(5, 1.5)
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no clustering metric to show (no labels and a single cycle?)", ha="center",
                va="center", fontsize=10)
        return save_png(fig, path)
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = new_figure(3.3 * ncols, 2.6 * nrows + (0.3 if len(runs) > 1 else 0))
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    _line_panels(axes[: len(panels)], runs, panels, label_colors(len(runs)))
    for ax in axes[: len(panels)]:
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    _legend(fig, axes[: len(panels)], len(runs))
    return save_png(fig, path)
