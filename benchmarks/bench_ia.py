"""Initial Alignment: 100 samples of LeNet-5 on the whole Fashion-MNIST train split (k=5),
stacked (several initialisations per pass over the data) in fp32 and in the default precision
(auto: bf16 where the CPU has it), and the plain loop (one network at a time through training's
feature extraction), timed side by side in one run, with the time of each phase.

Targets: issue "Initial Alignment and hyperparameter studies", 100 samples in under 60 s;
issue "Matrix units", under 40 s. The loop is timed on ``IA_LOOP_SAMPLES`` samples (default 5)
and its per-sample time reported; the same seeds' IA values are compared between the methods.
"""

import os
import time

import numpy as np
import torch
from _results import record

from deepcluster.analysis.alignment import initial_alignment
from deepcluster.core.config import TrainConfig, build_config
from deepcluster.data.splits import load_train_data

ROOT = os.environ.get("FMNIST", "/usr/share/datasets/fashion-mnist")
N = int(os.environ.get("IA_SAMPLES", "100"))
N_LOOP = int(os.environ.get("IA_LOOP_SAMPLES", "5"))
base = build_config(TrainConfig, "configs/fmnist_lenet.yaml", [f"data.root={ROOT}", "k=5"])
data = load_train_data(base)
print(f"torch threads: {torch.get_num_threads()}, images: {len(data)}, k={base.k}, pca_dim={base.pca_dim}")


def timed(cfg, seeds, method):
    t = time.perf_counter()
    res = initial_alignment(cfg, seeds, data=data, method=method, show_progress=False)
    return res, time.perf_counter() - t


fp32 = base.model_copy(update={"precision": "fp32"})
results = {"stacked fp32": timed(fp32, range(N), "stacked"), "stacked default": timed(base, range(N), "stacked"),
           "loop default": timed(base, range(N_LOOP), "loop")}
for name, (res, secs) in results.items():
    n = len(res.values)
    verdict = f"; target < 60 s / < 40 s for 100: {'MET' if secs * 100 / n < 60 else 'MISSED'} / " \
              f"{'MET' if secs * 100 / n < 40 else 'MISSED'}" if name.startswith("stacked") else \
              f" -> {secs / n * N:.0f} s for {N} at that rate"
    print(f"IA {name:16s} [{res.precision}]: {n} samples in {secs:.1f} s ({secs / n:.2f} s/sample){verdict}")
    print("    phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in res.phases.items()))
    if name.startswith("stacked"):
        record(f"ia.{name.replace(' ', '_')}.s_per_100", secs * 100 / n, "s", note="goal <= 40")
per = {k: secs / len(res.values) for k, (res, secs) in results.items()}
print(f"speed-up stacked vs loop (default precision): x{per['loop default'] / per['stacked default']:.1f}; "
      f"stacked default vs fp32: x{per['stacked fp32'] / per['stacked default']:.2f}")
s = results["stacked default"][0].summary()
print(f"IA distribution (k=5, default precision): min {s['min']:.3f} q1 {s['q1']:.3f} median {s['median']:.3f} "
      f"q3 {s['q3']:.3f} max {s['max']:.3f}")
record("ia.stacked_default_over_loop", per['loop default'] / per['stacked default'], "x", better="higher")
diff = np.abs(results["stacked default"][0].values[:N_LOOP] - results["loop default"][0].values).max()
print(f"max |IA stacked - IA loop| over the first {N_LOOP} seeds: {diff:.2e}")
