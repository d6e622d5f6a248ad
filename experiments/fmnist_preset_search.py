"""Which settings make DeepCluster-trained LeNet beat its random initialisation on Fashion-MNIST?

Trains one run per (setting, seed), then measures on the test split the linear probe and
kNN accuracy of the conv block (conv2) and of the 84-d layer (fc2), and the NMI to the labels of
k-means (k = 10) on the network's clustering features, for the trained network and for the
same network at its random initialisation. One JSON line per run goes to OUT/results.jsonl;
finished runs are skipped, so the script can be stopped and started again.

    python experiments/fmnist_preset_search.py --out runs/preset --seeds 0 1 2 \
        --setting base: --setting nopca:pca_dim=off --setting k50:k=50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from deepcluster.core.config import TrainConfig, build_config
from deepcluster.core.files import append_jsonl, read_jsonl
from deepcluster.core.precision import run_precision
from deepcluster.data import dataset_stats, load_dataset
from deepcluster.evaluate.run_eval import evaluate_model
from deepcluster.features import FeatureOptions
from deepcluster.runs import RunFolder
from deepcluster.train import train

LAYERS = ["conv2", "fc2"]


def flatten(res: dict) -> dict:
    out = {}
    for layer, r in res["layers"].items():
        out[f"{layer}_linear"] = r["linear"]
        out[f"{layer}_knn"] = r["knn"]
    out["nmi"] = res["clustering"]["nmi"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/fmnist_lenet.yaml")
    ap.add_argument("--out", default="runs/preset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--setting", action="append", default=[],
                    help="NAME:key=value,key=value (empty after the colon = the config as is)")
    ap.add_argument("--reeval-nmi", action="store_true", help="only recompute NMI of finished runs")
    args = ap.parse_args()
    out = Path(args.out)
    if args.reeval_nmi:
        return reeval_nmi(out)
    results = out / "results.jsonl"
    done = {(r["setting"], r["seed"]) for r in read_jsonl(results)}
    train_ds = load_dataset("fashion-mnist", split="train")
    test_ds = load_dataset("fashion-mnist", split="test")
    tr = (train_ds.images_tensor(), train_ds.labels)
    te = (test_ds.images_tensor(), test_ds.labels)
    stats = dataset_stats("fashion-mnist")
    for setting in args.setting:
        name, _, spec = setting.partition(":")
        overrides = [kv for kv in spec.split(",") if kv]
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            cfg = build_config(TrainConfig, args.config, [*overrides, f"seed={seed}"])
            ecfg = cfg.eval.model_copy(update={"layers": LAYERS, "probe": "lbfgs", "probe_hflip": False})
            run_dir = out / f"{name}_s{seed}"
            t0 = time.perf_counter()
            if RunFolder(run_dir).exists():
                run = train(cfg, run_dir, resume=True, show_progress=False)
            else:
                run = train(cfg, run_dir, show_progress=False)
            t_train = time.perf_counter() - t0
            rec = {"setting": name, "overrides": overrides, "seed": seed, "train_seconds": round(t_train, 1),
                   "last_nmi_labels": run.metrics()[-1].get("nmi_labels")}
            for which in ("last", "init"):
                model = run.build_model(which, cfg)
                reader = FeatureOptions(*stats, precision=run_precision(cfg, "cpu"), batch_size=cfg.feature_batch_size,
                                        show_progress=False)
                res = evaluate_model(model, cfg, ecfg, tr, te, reader, name=which)
                rec["trained" if which == "last" else "random"] = flatten(res)
            append_jsonl(results, rec)
            t, r = rec["trained"], rec["random"]
            print(f"{name} seed {seed}: " + "  ".join(f"{k} {t[k]:.4f} ({r[k]:.4f})" for k in t)
                  + f"  [{t_train:.0f}s]", flush=True)




def reeval_nmi(out: Path) -> None:
    """Recompute the NMI entries of finished runs (after a change of the NMI protocol)."""
    from deepcluster.core.files import write_text
    from deepcluster.evaluate.run_eval import clustering_quality

    ds = load_dataset("fashion-mnist", split="train")
    images, stats = ds.images_tensor(), dataset_stats("fashion-mnist")
    recs = read_jsonl(out / "results.jsonl")
    for rec in recs:
        run = RunFolder(out / f"{rec['setting']}_s{rec['seed']}")
        cfg = run.load_config()
        for which, key in (("last", "trained"), ("init", "random")):
            reader = FeatureOptions(*stats, precision=run_precision(cfg, "cpu"), batch_size=cfg.feature_batch_size,
                                    show_progress=False)
            rec[key]["nmi"] = clustering_quality(run.build_model(which, cfg), images, ds.labels, cfg, reader, k=10)["nmi"]
        print(rec["setting"], rec["seed"], rec["trained"]["nmi"], rec["random"]["nmi"], flush=True)
    write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in recs))


if __name__ == "__main__":
    main()
