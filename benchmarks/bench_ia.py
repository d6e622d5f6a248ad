"""Initial Alignment: 100 samples of LeNet-5 on the whole Fashion-MNIST train split (k=5),
stacked (several initialisations per pass over the data) vs the plain loop (one network at a
time through training's feature extraction), timed side by side in one run.

Target (issue "Initial Alignment and hyperparameter studies"): 100 samples in under 60 s on
2 cores. The loop is timed on ``IA_LOOP_SAMPLES`` samples (default 5) and its per-sample time
reported; the same seeds' IA values are compared between the two methods.
"""

import os
import time

import numpy as np
import torch

from deepcluster.analysis.alignment import initial_alignment
from deepcluster.config import TrainConfig, build_config
from deepcluster.data.splits import load_train_data

ROOT = os.environ.get("FMNIST", "/usr/share/datasets/fashion-mnist")
N = int(os.environ.get("IA_SAMPLES", "100"))
N_LOOP = int(os.environ.get("IA_LOOP_SAMPLES", "5"))
cfg = build_config(TrainConfig, "configs/fmnist_lenet.yaml", [f"data.root={ROOT}", "k=5"])
data = load_train_data(cfg)
print(f"torch threads: {torch.get_num_threads()}, images: {len(data)}, k={cfg.k}, pca_dim={cfg.pca_dim}")

t = time.perf_counter()
stacked = initial_alignment(cfg, range(N), data=data, method="stacked", show_progress=False)
t_stacked = time.perf_counter() - t
t = time.perf_counter()
loop = initial_alignment(cfg, range(N_LOOP), data=data, method="loop", show_progress=False)
t_loop = time.perf_counter() - t

per_stacked, per_loop = t_stacked / N, t_loop / N_LOOP
s = stacked.summary()
print(f"IA stacked: {N} samples in {t_stacked:.1f} s ({per_stacked:.2f} s/sample); "
      f"target < 60 s for 100: {'MET' if t_stacked * 100 / N < 60 else 'MISSED'}")
print(f"IA loop:    {N_LOOP} samples in {t_loop:.1f} s ({per_loop:.2f} s/sample) "
      f"-> {per_loop * N:.0f} s for {N} at that rate")
print("stacked phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stacked.phases.items())
      + "; loop phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in loop.phases.items()))
print(f"speed-up stacked vs loop: x{per_loop / per_stacked:.1f}")
print(f"IA distribution (k=5): min {s['min']:.3f} q1 {s['q1']:.3f} median {s['median']:.3f} "
      f"q3 {s['q3']:.3f} max {s['max']:.3f}")
diff = np.abs(stacked.values[:N_LOOP] - loop.values).max()
print(f"max |IA stacked - IA loop| over the first {N_LOOP} seeds: {diff:.2e}")
