"""Outputs of ``deepcluster ia``: samples, per-setting summary, recommendation, figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepcluster.analysis.alignment import IAResult, recommend
from deepcluster.core.files import write_csv, write_json, write_text
from deepcluster.core.plot import new_figure, save_png

__all__ = ["plot_ia_distributions", "summary_rows", "write_ia_outputs"]

SUMMARY_COLUMNS = ["setting", "n", "min", "q1", "median", "q3", "max", "mean", "best_seed", "seconds"]


def summary_rows(results: Sequence[IAResult]) -> list[dict[str, Any]]:
    """One row per setting: the distribution's min, quartiles, median, max, mean, best seed."""
    rows = []
    for r in results:
        s = r.summary()
        rows.append({"setting": r.name, **{k: s[k] for k in SUMMARY_COLUMNS[1:8]},
                     "best_seed": r.best_seed, "seconds": round(r.seconds, 2)})
    return rows


def _markdown(rows: list[dict[str, Any]], recommended: str) -> str:
    head = "| setting | n | min | q1 | median | q3 | max | best seed |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    lines = [
        f"| {r['setting']}{' **(recommended)**' if r['setting'] == recommended else ''} | {r['n']} | "
        f"{r['min']:.3f} | {r['q1']:.3f} | {r['median']:.3f} | {r['q3']:.3f} | {r['max']:.3f} | {r['best_seed']} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def plot_ia_distributions(results: Sequence[IAResult], path: str | Path, title: str | None = None) -> Path:
    """Violin + points per setting (a histogram when there is one setting), medians marked."""
    n = len(results)
    fig = new_figure(max(4.5, 1.1 * n + 2.5), 3.4, layout="tight")
    ax = fig.add_subplot()
    if n == 1:
        r = results[0]
        ax.hist(r.values, bins=min(30, max(5, len(r.values) // 4)), color="#4C72B0", alpha=0.85)
        med = r.summary()["median"]
        ax.axvline(med, color="k", ls="--", lw=1)
        ax.text(med, ax.get_ylim()[1] * 0.95, f" median {med:.3f}", va="top", fontsize=8)
        ax.set_xlabel("IA = NMI(labels, k-means of random features)")
        ax.set_ylabel("initialisations")
    else:
        data = [r.values for r in results]
        parts = ax.violinplot(data, showmedians=True, showextrema=True)
        for body in parts["bodies"]:
            body.set_alpha(0.35)
        rng = np.random.default_rng(0)
        for i, v in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.08, 0.08, len(v)), v, s=6, color="k", alpha=0.5, lw=0)
        ax.set_xticks(range(1, n + 1), [r.name for r in results], rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center",
                      fontsize=8)
        ax.set_ylabel("IA (NMI)")
    k_text = f"k={results[0].k}" if len({r.k for r in results}) == 1 else "k varies"
    ax.set_title(title or f"Initial Alignment over {len(results[0].values)} initialisations ({k_text})", fontsize=10)
    return save_png(fig, path)


def write_ia_outputs(results: Sequence[IAResult], out: str | Path, *, tie: float = 0.01,
                     command_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write samples (CSV, JSON), summary (CSV, Markdown), seed ranking, recommendation, figure.

    Returns the recommendation record (also in ``recommendation.json``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(results)
    best = recommend(results, tie=tie)
    rec = {"setting": best.setting, "name": best.name, "median": best.summary()["median"], "tie": tie,
           "rule": "highest median IA; within `tie` of it, the cheapest setting (smaller k / dims / iterations)",
           "best_seed": best.best_seed, "best_seed_ia": best.ranked()[0][1]}
    samples = [{"setting": r.name, "seed": int(s), "ia": float(v)} for r in results for s, v in zip(r.seeds, r.values)]
    write_csv(out / "samples.csv", samples, ["setting", "seed", "ia"], float_format=".6f")
    write_json(out / "samples.json", {"settings": [
        {"setting": r.setting, "name": r.name, "k": r.k, "n_images": r.n_images, "n_labelled": r.n_labelled,
         "method": r.method, "seconds": round(r.seconds, 3), "seeds": r.seeds.tolist(), "ia": r.values.tolist()}
        for r in results]})
    write_csv(out / "summary.csv", rows, SUMMARY_COLUMNS, float_format=".6f")
    write_text(out / "summary.md", _markdown(rows, best.name))
    ranking = [{"setting": r.name, "rank": i + 1, "seed": s, "ia": v}
               for r in results for i, (s, v) in enumerate(r.ranked())]
    write_csv(out / "seed_ranking.csv", ranking, ["setting", "rank", "seed", "ia"], float_format=".6f")
    write_json(out / "recommendation.json", rec)
    if command_config is not None:
        write_json(out / "ia_config.json", command_config)
    plot_ia_distributions(results, out / "ia_distribution.png")
    if len(results) > 1:  # one histogram per setting too, as the papers' per-setting figures
        for r in results:
            safe = "".join(c if c.isalnum() or c in "=.-" else "_" for c in r.name)
            plot_ia_distributions([r], out / "figures" / f"ia_{safe}.png", title=f"IA, {r.name}")
    return rec
