"""fp32 vs bf16 (and the default, precision=auto) side by side in one run, with their accuracy cost.

- one DeepCluster cycle of LeNet-5 on all 60,000 Fashion-MNIST images, per phase;
- one cycle of small AlexNet on a 10,000-image subset at 32 px, per phase, with the feature pass
  and the training epoch in images/s;
- IA of 20 seeds (k = 5): max |IA(fp32) - IA(bf16)| (goal <= 0.01), and the medians;
- the conv2 linear probe (SGD, last epoch) after 5 cycles on Fashion-MNIST, fp32 vs bf16
  (goal: within +-0.3 points).

Set PRECISION_PROBE=0 to skip the last one (about 3 minutes).
"""

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import record

from deepcluster.analysis.alignment import initial_alignment
from deepcluster.core.config import TrainConfig, build_config
from deepcluster.core.device import resolve_device
from deepcluster.core.precision import run_precision
from deepcluster.data.source import as_source
from deepcluster.data.splits import load_train_data, normalization
from deepcluster.evaluate.suite import evaluate_suite
from deepcluster.features import FeatureOptions
from deepcluster.runs import build_network
from deepcluster.train import train
from deepcluster.train.cycle import make_optimizer, run_cycle

ROOT = os.environ.get("FMNIST", "/usr/share/datasets/fashion-mnist")
CPU = torch.device("cpu")
print(f"torch threads: {torch.get_num_threads()}; precision=auto resolves to "
      f"{run_precision(build_config(TrainConfig, None, []), resolve_device('auto')).label} here")


def one_cycle(sets: list[str], precision: str) -> dict[str, float]:
    cfg = build_config(TrainConfig, "configs/fmnist_lenet.yaml", [f"data.root={ROOT}", *sets, f"precision={precision}"])
    data = load_train_data(cfg)
    images = data.images_tensor()
    stats = normalization(cfg, int(images.shape[1]))
    prec = run_precision(cfg, CPU)
    model = build_network(cfg, int(images.shape[1]), int(images.shape[-1]))
    reader = FeatureOptions(*stats, device=CPU, precision=prec, batch_size=cfg.feature_batch_size, show_progress=False)
    phases = dict(run_cycle(model, as_source(images), make_optimizer(model, cfg), cfg, reader, cycle=1,
                            generator=torch.Generator().manual_seed(0)).seconds)
    phases["total"] = sum(phases.values())
    phases["n"] = len(images)
    phases["label"] = prec.label
    return phases


def show(title: str, rows: dict[str, dict]) -> None:
    print(title)
    base = rows["fp32"]
    for name, p in rows.items():
        line = ", ".join(f"{k} {p[k]:.2f}" for k in ("features", "pca", "clustering", "training", "total"))
        speed = (f"; feature pass {p['n'] / p['features']:,.0f} img/s (x{base['features'] / p['features']:.2f}), "
                 f"training {p['n'] / p['training']:,.0f} img/s (x{base['training'] / p['training']:.2f}), "
                 f"cycle x{base['total'] / p['total']:.2f}")
        print(f"  {name:5s} [{p['label']}]: {line} s{speed}")
        if name != "fp32":
            tag = title.split(" cycle")[0].replace(" ", "_").lower()
            record(f"precision.{tag}.{name}.training_speedup", base['training'] / p['training'], "x", better="higher")
            record(f"precision.{tag}.{name}.features_speedup", base['features'] / p['features'], "x", better="higher")


show("LeNet-5 cycle, Fashion-MNIST 60,000 images (s):",
     {p: one_cycle([], p) for p in ("fp32", "bf16", "auto")})
show("small AlexNet cycle, 10,000 Fashion-MNIST images at 32 px (s):",
     {p: one_cycle(["model.arch=small_alexnet", "data.image_size=32", "data.limit=10000"], p) for p in ("fp32", "bf16")})

ia = {}
for p in ("fp32", "bf16"):
    cfg = build_config(TrainConfig, "configs/fmnist_lenet.yaml", [f"data.root={ROOT}", "k=5", f"precision={p}"])
    ia[p] = initial_alignment(cfg, range(20), show_progress=False)
d = np.abs(ia["fp32"].values - ia["bf16"].values)
print(f"IA of 20 seeds (k=5), fp32 vs bf16: max |diff| {d.max():.4f} (goal <= 0.01: {'MET' if d.max() <= 0.01 else 'MISSED'}), "
      f"mean {d.mean():.4f}, seeds over 0.01: {int((d > 0.01).sum())}; median fp32 {np.median(ia['fp32'].values):.4f} "
      f"vs bf16 {np.median(ia['bf16'].values):.4f}; {ia['fp32'].seconds:.1f} s vs {ia['bf16'].seconds:.1f} s")

if os.environ.get("PRECISION_PROBE", "1") != "0":
    acc = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in ("fp32", "bf16"):
            cfg = build_config(TrainConfig, "configs/fmnist_lenet.yaml", [f"data.root={ROOT}", "cycles=5", f"precision={p}"])
            t = time.perf_counter()
            train(cfg, Path(tmp) / p, show_progress=False)
            rows = evaluate_suite([Path(tmp) / p], ["last"], ["conv2"], ["linear"], pixel_baseline=False,
                                  show_progress=False)
            acc[p] = next(r["value"] for r in rows if r["metric"] == "last_acc")
            print(f"  {p}: 5 cycles + conv2 probe in {time.perf_counter() - t:.0f} s: {100 * acc[p]:.2f} %", flush=True)
    gap = 100 * (acc["bf16"] - acc["fp32"])
    record("precision.conv2_probe_bf16_minus_fp32", gap, "pt", better="higher", note="goal within +-0.3")
    print(f"conv2 linear probe after 5 cycles: fp32 {100 * acc['fp32']:.2f} % vs bf16 {100 * acc['bf16']:.2f} % "
          f"({gap:+.2f} points; goal within +-0.3: {'MET' if abs(gap) <= 0.3 else 'MISSED'})")
