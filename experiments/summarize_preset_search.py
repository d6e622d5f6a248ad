"""Markdown table of experiments/fmnist_preset_search.py results: mean over seeds, trained (random).

    python experiments/summarize_preset_search.py runs/preset/results.jsonl
"""

import sys
from collections import defaultdict

import numpy as np

from deepcluster.core.files import read_jsonl

METRICS = ["conv2_linear", "conv2_knn", "fc2_linear", "fc2_knn", "nmi"]


def main(path: str) -> None:
    by_setting = defaultdict(list)
    for r in read_jsonl(path):
        by_setting[r["setting"]].append(r)
    print("| setting | overrides | seeds | " + " | ".join(METRICS) + " | wins |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " | --- |")
    for name, recs in by_setting.items():
        cells, wins = [], 0
        for m in METRICS:
            t = np.array([r["trained"][m] for r in recs])
            rnd = np.array([r["random"][m] for r in recs])
            wins += int((t > rnd).sum())
            fmt = "{:.3f}" if m == "nmi" else "{:.1%}"
            cells.append(f"{fmt.format(t.mean())} ({fmt.format(rnd.mean())})".replace("%", ""))
        overrides = ", ".join(recs[0]["overrides"]) or "preset"
        print(f"| {name} | {overrides} | {len(recs)} | " + " | ".join(cells) + f" | {wins}/{len(METRICS) * len(recs)} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/preset/results.jsonl")
