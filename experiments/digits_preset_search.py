"""Which settings make the digits preset's trained network beat its random initialisation on every layer?

The README's first command trains ``configs/digits_tiny.yaml``; its evaluation once showed the
trained fc1/fc2 probes 21-26 points *below* the random network's. This script measures settings
exactly as a user would: for each (setting, seed) it runs

    deepcluster train -c CONFIG -o OUT/<setting>_s<seed> --set seed=<seed> --set <overrides> -q
    deepcluster evaluate OUT/<setting>_s<seed> --protocols linear,knn -q

and reads ``eval/probe_table.csv``: the SGD linear probe (accuracy after the last epoch) and the
weighted cosine kNN (k = 20) of every layer, for the trained network ("last") and for the same
network at its random initialisation ("init"), on digits' 297-image test split. The random network
is the same for every setting with the same seed, architecture and data (its numbers too: the
probes are seeded), so it is evaluated once per such key (``--checkpoints init,last`` in the first
run, ``last`` after); the raw-pixel baseline is left out. One JSON line per
run goes to OUT/results.jsonl; finished runs are skipped, so the script can be stopped and started
again. ``--summary`` prints the table of docs/digits_preset.md from OUT/results.jsonl.

    python experiments/digits_preset_search.py --out runs/digits_search --seeds 0 1 \\
        --setting "base:" --setting "c15:cycles=15" --setting "k50:k=50"
    python experiments/digits_preset_search.py --out runs/digits_search --summary
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

PROTOCOLS = {"linear": "last_acc", "knn": "k=20"}


def run_cli(*args: str) -> float:
    """``deepcluster ARGS`` in a fresh process; returns its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deepcluster", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def read_probes(run_dir: Path) -> dict[str, dict[str, float]]:
    """{"trained": {"conv1_linear": 0.97, ...}, "random": {...}} from the run's probe_table.csv."""
    out: dict[str, dict[str, float]] = {"trained": {}, "random": {}}
    with open(run_dir / "eval" / "probe_table.csv", newline="") as f:
        for row in csv.DictReader(f):
            which = {"last": "trained", "init": "random"}.get(row["checkpoint"])
            if which and PROTOCOLS.get(row["protocol"]) == row["metric"]:
                out[which][f"{row['layer']}_{row['protocol']}"] = float(row["value"])
    return out


def last_nmi(run_dir: Path) -> float | None:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]).get("nmi_labels") if lines else None


def search(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done, randoms = set(), {}
    if results.exists():
        for r in map(json.loads, results.read_text().splitlines()):
            done.add((r["setting"], r["seed"]))
            key = r.get("random_from") or json.dumps(
                [r["seed"], *sorted(kv for kv in r["overrides"] if kv.startswith(("model.", "data.")))])
            randoms.setdefault(key, r["random"])
    for setting in args.setting:
        name, _, spec = setting.partition(":")
        overrides = [kv for kv in spec.split(",") if kv]
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            run_dir = out / f"{name}_s{seed}"
            sets = [x for kv in [*overrides, f"seed={seed}"] for x in ("--set", kv)]
            shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run: start it again (seconds)
            train_s = run_cli("train", "-c", args.config, "-o", str(run_dir), *sets, "-q")
            # The random network depends only on the seed, the architecture and the data: its numbers
            # are measured once per such key (in the first run that has it) and reused.
            key = json.dumps([seed, *sorted(kv for kv in overrides if kv.startswith(("model.", "data.")))])
            first = key not in randoms
            eval_s = run_cli("evaluate", str(run_dir), "--protocols", "linear,knn", "--checkpoints",
                             "init,last" if first else "last", "--set", "pixel_baseline=false", "-q")
            probes = read_probes(run_dir)
            if first:
                randoms[key] = probes["random"]
            rec = {"setting": name, "overrides": overrides, "seed": seed, "train_seconds": round(train_s, 1),
                   "eval_seconds": round(eval_s, 1), "last_nmi_labels": last_nmi(run_dir),
                   "trained": probes["trained"], "random": randoms[key], "random_from": key}
            with open(results, "a") as f:
                f.write(json.dumps(rec) + "\n")
            t, r = rec["trained"], rec["random"]
            print(f"{name} seed {seed}: " + "  ".join(f"{k} {100 * t[k]:.1f} ({100 * r[k]:.1f})" for k in t)
                  + f"  [train {train_s:.0f} s, evaluate {eval_s:.0f} s]", flush=True)


def summary(args: argparse.Namespace) -> None:
    """Markdown table: per setting, the mean over seeds of trained (random) for each layer × protocol,
    the worst margin, and how many layer × protocol × seed cells the trained network wins."""
    recs = [json.loads(line) for line in (Path(args.out) / "results.jsonl").read_text().splitlines()]
    by: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by[r["setting"]].append(r)
    keys = [k for k in recs[0]["trained"] if not args.layers or k.rsplit("_", 1)[0] in args.layers.split(",")]
    print("| setting | overrides | seeds | " + " | ".join(keys) + " | worst margin | wins | train s |")
    print("| --- " * (len(keys) + 6) + "|")
    for name, rs in by.items():
        cells, wins, worst = [], 0, float("inf")
        for k in keys:
            t = sum(r["trained"][k] for r in rs) / len(rs)
            ra = sum(r["random"][k] for r in rs) / len(rs)
            cells.append(f"{100 * t:.1f} ({100 * ra:.1f})")
            wins += sum(r["trained"][k] > r["random"][k] for r in rs)
            worst = min(worst, *(100 * (r["trained"][k] - r["random"][k]) for r in rs))
        secs = sum(r["train_seconds"] for r in rs) / len(rs)
        print(f"| {name} | {', '.join(rs[0]['overrides']) or '(preset)'} | {len(rs)} | " + " | ".join(cells)
              + f" | {worst:+.1f} | {wins}/{len(keys) * len(rs)} | {secs:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tests/train/golden_digits.yaml",
                    help="a preset name or a YAML file (default: the digits preset before this search, frozen for the golden run)")
    ap.add_argument("--out", default="runs/digits_search")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--setting", action="append", default=[],
                    help="NAME:key=value,key=value (empty after the colon = the config as is)")
    ap.add_argument("--summary", action="store_true", help="only print the table of OUT/results.jsonl")
    ap.add_argument("--layers", help="with --summary: only these layers (comma-separated), in the cells and the wins")
    args = ap.parse_args()
    if args.summary:
        summary(args)
    else:
        search(args)


if __name__ == "__main__":
    main()
