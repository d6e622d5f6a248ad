"""Summaries of a study folder: per-setting medians and IQRs, CSV/Markdown tables, figures.

Everything is read from the folder (``trials/*/result.json``, ``ia/``, ``plan.json``), never from
the optuna storage, so a copied or archived study folder can be summarised on its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepcluster.analysis.study_plots import (
    plot_ia_vs_accuracy,
    plot_median_ia_vs_accuracy,
    plot_metric_by_value,
)
from deepcluster.core.errors import ConfigError
from deepcluster.core.files import write_csv, write_text

TRIAL_COLUMNS = ["slug", "setting", "seed", "accuracy", "linear", "knn", "nmi", "ari", "kmeans_acc",
                 "nmi_labels_final", "ia", "cycles", "seconds", "train_starts"]


@dataclass
class StudySummary:
    """Per-setting statistics of a study and where they were written.

    Attributes
    ----------
    study_dir : Path
    name : str
    grid_keys : list[str]
    metric : dict
        ``{"layer": ..., "protocol": ...}``: what "accuracy" is.
    settings : list[dict]
        One row per setting (grid order): status (trained / pending / failed / dropped), n, median,
        q1, q3, IQR of accuracy, NMI, trial IA, plus the setting's IA distribution when computed.
    trials : list[dict]
        Every finished trial (``result.json``).
    failed : list[dict]
        Trials that ended with an error (``error.json``).
    spearman : dict or None
        Spearman's ρ (and p) between trial IA and accuracy, when there are 3+ trials with an IA.
    prescreen : dict or None
        Dropped settings and the compute that saved.
    files : dict[str, Path]
        Written files: ``trials_csv``, ``summary_csv``, ``summary_md`` and one per figure.
    """

    study_dir: Path
    name: str
    grid_keys: list[str]
    metric: dict[str, Any]
    settings: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    spearman: dict[str, float] | None = None
    prescreen: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)


def _stats(values: list[float | None]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"median": None, "q1": None, "q3": None, "iqr": None}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _show(value: Any, digits: int = 3) -> str:
    if value is None:
        return "off"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summarize_study(study_dir: str | Path, *, figures: bool = True, log: Callable[[str], None] | None = None) -> StudySummary:
    """Summarise a study folder into ``trials.csv``, ``summary.csv``, ``summary.md`` and figures.

    Parameters
    ----------
    study_dir : str or Path
        A folder made by :func:`~deepcluster.analysis.study.run_study`.
    figures : bool
        Also draw the PNG figures into ``<study>/figures/``.
    log : callable, optional
        Receives one line naming the written files.

    Returns
    -------
    StudySummary

    Raises
    ------
    ConfigError
        ``study_dir`` is not a study folder.
    """
    study_dir = Path(study_dir)
    desc, plan = _read_json(study_dir / "study.json"), _read_json(study_dir / "plan.json")
    if desc is None or plan is None:
        raise ConfigError(f"{study_dir} is not a prepared study folder (no study.json/plan.json): "
                          "pass the --out folder of `deepcluster study SPEC.yaml`")
    grid_keys: list[str] = desc["grid_keys"]
    summary = StudySummary(study_dir=study_dir, name=desc["name"], grid_keys=grid_keys, metric=desc["metric"])

    setting_of = {t["slug"]: t["setting"] for t in plan["trials"]}
    for t in plan["trials"]:
        res = _read_json(study_dir / "trials" / t["slug"] / "result.json")
        if res is not None:
            summary.trials.append({**res, **res["params"]})
            continue
        err = _read_json(study_dir / "trials" / t["slug"] / "error.json")
        if err is not None:
            summary.failed.append(err)
    dropped = set(plan.get("dropped", []))

    for s in plan["settings"]:
        rows = [t for t in summary.trials if t["setting"] == s["slug"]]
        dist = _read_json(study_dir / "ia" / f"{s['slug']}.json")
        n_planned = sum(1 for t in plan["trials"] if t["setting"] == s["slug"])
        n_failed = sum(1 for f in summary.failed if setting_of.get(f["slug"]) == s["slug"])
        if s["slug"] in dropped:
            status = "dropped"
        elif len(rows) + n_failed < n_planned:
            status = "pending"
        else:
            status = "failed" if n_failed else "trained"
        row: dict[str, Any] = {"setting": s["slug"], **s["params"], "status": status, "n": len(rows),
                               "n_planned": n_planned, "failed": n_failed}
        for metric in ("accuracy", "nmi", "nmi_labels_final", "ia", "seconds"):
            for stat, value in _stats([r.get(metric) for r in rows]).items():
                row[f"{metric}_{stat}"] = value
        if dist is not None:
            row.update({"ia_dist_median": dist["summary"]["median"], "ia_dist_q1": dist["summary"]["q1"],
                        "ia_dist_q3": dist["summary"]["q3"], "ia_dist_n": dist["summary"]["n"]})
        summary.settings.append(row)

    with_ia = [t for t in summary.trials if t.get("ia") is not None]
    if len(with_ia) >= 3 and len({t["ia"] for t in with_ia}) > 1 and len({t["accuracy"] for t in with_ia}) > 1:
        from scipy.stats import spearmanr

        rho, p = spearmanr([t["ia"] for t in with_ia], [t["accuracy"] for t in with_ia])
        summary.spearman = {"rho": float(rho), "p": float(p), "n": len(with_ia)}

    pre = _read_json(study_dir / "prescreen.json")
    if pre is not None:
        secs = [t["seconds"] for t in summary.trials if t.get("seconds")]
        mean = float(np.mean(secs)) if secs else None
        pre["mean_trial_seconds"] = mean
        pre["estimated_seconds_saved"] = None if mean is None else round(mean * pre["dropped_trials"], 1)
        summary.prescreen = pre

    trial_cols = TRIAL_COLUMNS[:2] + grid_keys + TRIAL_COLUMNS[2:]
    write_csv(study_dir / "trials.csv", summary.trials, trial_cols)
    summary.files["trials_csv"] = study_dir / "trials.csv"
    stat_cols = [f"{m}_{s}" for m in ("accuracy", "nmi", "nmi_labels_final", "ia")
                 for s in ("median", "q1", "q3", "iqr")] + ["seconds_median"]
    setting_cols = ["setting", *grid_keys, "status", "n", "n_planned", "failed", *stat_cols,
                    "ia_dist_median", "ia_dist_q1", "ia_dist_q3", "ia_dist_n"]
    write_csv(study_dir / "summary.csv", summary.settings, setting_cols)
    summary.files["summary_csv"] = study_dir / "summary.csv"

    if figures:
        summary.files.update(draw_figures(summary, desc, study_dir / "figures"))
    write_text(study_dir / "summary.md", _markdown(summary))
    summary.files["summary_md"] = study_dir / "summary.md"
    if log is not None:
        log(f"summary: {len(summary.trials)}/{len(plan['trials'])} trials finished → {study_dir / 'summary.md'}")
    return summary


def _markdown(s: StudySummary) -> str:
    metric = f"{s.metric['protocol']} probe on {s.metric['layer']}"
    n_planned = sum(r["n_planned"] for r in s.settings)
    lines = [
        f"# Study `{s.name}`",
        "",
        (f"{len(s.trials)} of {n_planned} trials finished. Accuracy: {metric} of the final network "
         "(test split). NMI: k-means (as many clusters as classes) of the final network's clustering "
         "features vs labels. IA: Initial Alignment of the trial's random initialisation "
         "(Deep Dive §4.1). Median [q1–q3] over seeds."),
        "",
    ]
    header = [*s.grid_keys, "status", "n", "accuracy", "NMI", "IA (trials)", "IA distribution"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(r: dict[str, Any], m: str, digits: int = 3) -> str:
        if r.get(f"{m}_median") is None:
            return "–"
        return f"{r[f'{m}_median']:.{digits}f} [{r[f'{m}_q1']:.{digits}f}–{r[f'{m}_q3']:.{digits}f}]"

    for r in s.settings:
        dist = "–" if r.get("ia_dist_median") is None else (
            f"{r['ia_dist_median']:.3f} [{r['ia_dist_q1']:.3f}–{r['ia_dist_q3']:.3f}] (n={r['ia_dist_n']})")
        lines.append("| " + " | ".join([*(_show(r.get(k)) for k in s.grid_keys), r["status"], str(r["n"]),
                                          cell(r, "accuracy", 4), cell(r, "nmi"), cell(r, "ia"), dist]) + " |")
    lines.append("")
    if s.spearman is not None:
        lines.append(f"Spearman's ρ between trial IA and accuracy: {s.spearman['rho']:.3f} "
                     f"(p = {s.spearman['p']:.3g}, {s.spearman['n']} trials).")
        lines.append("")
    if s.prescreen is not None:
        p = s.prescreen
        est = p.get("estimated_seconds_saved")
        lines += [
            "## IA pre-screening",
            "",
            f"Dropped the settings whose median IA ({p['ia_seeds']} random networks each) is in the lowest "
            f"{p['drop_fraction']:.0%}: {', '.join(p['dropped']) or 'none'}. "
            f"That saved {p['dropped_trials']} of {p['total_trials']} trials ({p['fraction_saved']:.0%})"
            + (f", about {est / 60:.1f} minutes at the measured {p['mean_trial_seconds']:.0f} s per trial." if est else "."),
            "",
        ]
    if s.failed:
        lines += ["## Failed trials", ""] + [f"- `{f['slug']}`: {f['error']}" for f in s.failed] + [""]
    figs = [(k, v) for k, v in s.files.items() if str(v).endswith(".png")]
    if figs:
        lines += ["## Figures", ""] + [f"![{k}](figures/{v.name})" for k, v in figs] + [""]
    return "\n".join(lines)


def draw_figures(summary: StudySummary, desc: dict[str, Any], out: Path) -> dict[str, Path]:
    """Every figure that the study's data supports; returns name → path."""
    files: dict[str, Path] = {}
    grid = desc["fingerprint"].get("grid", {})
    for key in summary.grid_keys:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
        p = plot_metric_by_value(summary.trials, key, grid[key], out / f"accuracy_vs_{safe}.png", summary.metric)
        if p is not None:
            files[f"accuracy_vs_{safe}"] = p
    if "halt_clustering_after" in summary.grid_keys:
        # "never halts" (off) sits at the last cycle, where halting changes nothing.
        trials = [{**t, "halt_position": t["halt_clustering_after"] or t["cycles"]} for t in summary.trials]
        positions = sorted({t["halt_position"] for t in trials})
        p = plot_metric_by_value(trials, "halt_position", positions, out / "halting_vs_accuracy.png", summary.metric,
                                 x_label="clustering halted after cycle (last cycle: never halted)",
                                 title="accuracy vs halting position (median, IQR)")
        if p is not None:
            files["halting_vs_accuracy"] = p
    if not summary.grid_keys and len({t["seed"] for t in summary.trials}) > 1:
        p = plot_metric_by_value(summary.trials, "seed", sorted({t["seed"] for t in summary.trials}),
                                 out / "accuracy_vs_seed.png", summary.metric)
        if p is not None:
            files["accuracy_vs_seed"] = p
    p = plot_ia_vs_accuracy(summary.trials, out / "ia_vs_accuracy.png", summary.metric, summary.spearman)
    if p is not None:
        files["ia_vs_accuracy"] = p
    p = plot_median_ia_vs_accuracy(summary.settings, out / "median_ia_vs_accuracy.png", summary.metric)
    if p is not None:
        files["median_ia_vs_accuracy"] = p
    return files
