"""The halting table of docs/reproduction.md (row 4, the Deep Dive authors' protocol) from a study folder.

Every trial of ``deepcluster study configs/papers/deep_dive_fmnist_halting.yaml -o STUDY`` is
evaluated the same way, with ``deepcluster evaluate``'s suite (cached in each trial's
``eval/cache``, so a second call only reads):

- the authors' probe: conv2 before its pooling (1,600-d), SGD for 20 epochs with horizontal
  flips (``probe_hflip``), accuracy after the last epoch on the 10,000 test images;
- the converged L-BFGS probe on the same features, for comparison.

It writes ``OUT/trials.json`` (one record per trial: both probes, the NMI of the final network's
clustered features and of the last assignments to the labels, IA, seconds) and prints the
Markdown table per seed.

    python experiments/papers_halting_table.py runs/papers/halting --out docs/results/papers_halting
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deepcluster.core.files import write_json
from deepcluster.evaluate import evaluate_suite

LAYER = "conv2_prepool"
AUTHORS = {"probe": "sgd", "probe_epochs": 20, "probe_hflip": True}
LBFGS = {"probe": "lbfgs"}


def probe(trial: Path, ecfg: dict) -> float:
    rows = evaluate_suite([trial], ["last"], [LAYER], ["linear"], eval_cfg=ecfg, pixel_baseline=False,
                          show_progress=False, log=lambda _msg: None)
    (value,) = [r["value"] for r in rows if r["metric"] in ("last_acc", "test_acc")]
    return float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/results/papers_halting"))
    args = parser.parse_args()
    records = []
    for result in sorted((args.study / "trials").glob("*/result.json")):
        trial, res = result.parent, json.loads(result.read_text())
        halt = int(res["params"]["halt_clustering_after"])
        rec = {"slug": res["slug"], "seed": res["seed"], "halt": halt,
               "authors_probe": probe(trial, AUTHORS), "lbfgs_probe": probe(trial, LBFGS),
               "knn": res.get("knn"), "nmi": res.get("nmi"), "nmi_labels_final": res.get("nmi_labels_final"),
               "ia": res.get("ia"), "cycles": 50, "seconds": res.get("seconds")}
        records.append(rec)
        print(f"{rec['slug']}: authors' probe {rec['authors_probe']:.4f}, L-BFGS {rec['lbfgs_probe']:.4f}", flush=True)
    records.sort(key=lambda r: (r["seed"], r["halt"]))
    write_json(args.out / "trials.json", records)

    halts = sorted({r["halt"] for r in records})
    cell = {(r["seed"], r["halt"]): r for r in records}
    names = [f"after {h}" if h < 50 else "never (50)" for h in halts]
    print("\n| seed | probe | " + " | ".join(names) + " | never − after 1 |")
    print("| --- | --- |" + " ---: |" * (len(halts) + 1))
    for seed in sorted({r["seed"] for r in records}):
        for key, label in (("authors_probe", "SGD + flips"), ("lbfgs_probe", "L-BFGS")):
            vals = [cell[(seed, h)][key] * 100 if (seed, h) in cell else None for h in halts]
            best = max(v for v in vals if v is not None)
            shown = [("–" if v is None else (f"**{v:.2f} %**" if v == best else f"{v:.2f} %")) for v in vals]
            diff = (f"{vals[-1] - vals[0]:+.2f}" if None not in (vals[0], vals[-1]) and halts[0] == 1
                    and halts[-1] == 50 else "–")
            print(f"| {seed} | {label} | " + " | ".join(shown) + f" | {diff} |")


if __name__ == "__main__":
    main()
