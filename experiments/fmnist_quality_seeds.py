"""Trained vs random LeNet-5 per layer over seeds: the demo's evaluation, repeated.

For each seed: ``deepcluster train --config CONFIG --set seed=S`` on all 60,000 Fashion-MNIST
training images (resumed when the run exists), then ``deepcluster evaluate RUN --checkpoints
init,last --protocols linear`` (the demo's linear probe: SGD, accuracy after the last epoch, on
the official test split). Then per layer: median, min and max over the seeds of the trained and
the random network, how many seeds the trained one wins, and a figure.

    python experiments/fmnist_quality_seeds.py --config configs/fmnist_lenet.yaml --seeds 0 1 2 3 4 \
        --out runs/quality/fmnist_lenet --results docs/results/fmnist_quality/fmnist_lenet

Writes RESULTS/per_seed.csv, RESULTS/summary.csv, RESULTS/summary.md and
RESULTS/trained_vs_random.png (small: the README's results figure).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path
from statistics import median

BIN = Path(sys.executable).parent / "deepcluster"
FMNIST = "/usr/share/datasets/fashion-mnist"


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def linear_rows(run_dir: Path) -> dict[tuple[str, str], float]:
    """(checkpoint label, layer) -> last-epoch linear probe accuracy (%) of the run's evaluation."""
    out = {}
    with open(run_dir / "eval" / "probe_table.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["protocol"] == "linear" and r["metric"] == "last_acc" and r["checkpoint"] in ("init", "last"):
                out[(r["checkpoint"], r["layer"])] = 100 * float(r["value"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/fmnist_lenet.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra training override KEY=VALUE")
    ap.add_argument("--out", type=Path, required=True, help="parent of the run folders")
    ap.add_argument("--results", type=Path, required=True, help="where the tables and the figure go")
    args = ap.parse_args()

    per_seed = []
    for seed in args.seeds:
        run_dir = args.out / f"seed{seed}"
        if (run_dir / "config.yaml").is_file():
            run([str(BIN), "train", "--resume", str(run_dir), "-q"])
        else:
            sets = [x for kv in [f"data.root={FMNIST}", f"seed={seed}", *args.sets] for x in ("--set", kv)]
            run([str(BIN), "train", "--config", args.config, *sets, "--out", str(run_dir), "-q"])
        if not (run_dir / "eval" / "probe_table.csv").is_file():
            run([str(BIN), "evaluate", str(run_dir), "--checkpoints", "init,last", "--protocols", "linear", "-q"])
        acc = linear_rows(run_dir)
        for (ckpt, layer), v in sorted(acc.items()):
            per_seed.append({"seed": seed, "checkpoint": ckpt, "layer": layer, "accuracy": v})

    layers = list(dict.fromkeys(r["layer"] for r in per_seed if r["checkpoint"] == "last"))
    summary = []
    for layer in layers:
        trained = {r["seed"]: r["accuracy"] for r in per_seed if r["layer"] == layer and r["checkpoint"] == "last"}
        random = {r["seed"]: r["accuracy"] for r in per_seed if r["layer"] == layer and r["checkpoint"] == "init"}
        wins = sum(trained[s] > random[s] for s in trained if s in random)
        summary.append({
            "layer": layer, "seeds": len(trained),
            "trained_median": median(trained.values()), "trained_min": min(trained.values()), "trained_max": max(trained.values()),
            "random_median": median(random.values()) if random else "", "random_min": min(random.values()) if random else "",
            "random_max": max(random.values()) if random else "", "wins": wins,
        })
    args.results.mkdir(parents=True, exist_ok=True)
    for name, rows in (("per_seed.csv", per_seed), ("summary.csv", summary)):
        with open(args.results / name, "w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    lines = [f"Config `{args.config}`" + (f" with {', '.join(args.sets)}" if args.sets else "")
             + f"; seeds {', '.join(map(str, args.seeds))}. Linear probe (SGD, last epoch), test split, %.", "",
             "| layer | trained: median [min–max] | random: median [min–max] | trained wins |", "|---|---|---|---|"]
    for s in summary:
        rnd = f"{s['random_median']:.2f} [{s['random_min']:.2f}–{s['random_max']:.2f}]" if s["random_median"] != "" else "-"
        lines.append(f"| {s['layer']} | {s['trained_median']:.2f} [{s['trained_min']:.2f}–{s['trained_max']:.2f}] | {rnd} "
                     f"| {s['wins']}/{s['seeds']} |")
    (args.results / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figure(summary, per_seed, args.results / "trained_vs_random.png", len(args.seeds))


def figure(summary: list[dict], per_seed: list[dict], path: Path, n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = [s["layer"] for s in summary]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    for offset, ckpt, label, color in ((-0.17, "init", "random init", "#999999"), (0.17, "last", "DeepCluster", "#1f77b4")):
        med = [s["random_median" if ckpt == "init" else "trained_median"] for s in summary]
        ax.bar(x + offset, med, width=0.32, color=color, label=f"{label} (median)")
        for i, layer in enumerate(layers):
            vals = [r["accuracy"] for r in per_seed if r["layer"] == layer and r["checkpoint"] == ckpt]
            ax.scatter(np.full(len(vals), x[i] + offset), vals, s=9, color="black", zorder=3)
    lo = min(r["accuracy"] for r in per_seed)
    ax.set_ylim(max(0, lo - 3), min(100, max(r["accuracy"] for r in per_seed) + 1.5))
    ax.set_xticks(x, layers)
    ax.set_ylabel("linear probe, test accuracy (%)")
    ax.set_title(f"LeNet-5 on Fashion-MNIST, {n_seeds} seeds (dots)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
