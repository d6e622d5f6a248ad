"""How close is a PCA fitted on a seeded sample to the full fit, next to the streamed moments?

The cycle's PCA (docs/data.md) is fitted from float64 moments accumulated chunk by chunk, which
is the full fit up to rounding. Fitting on a seeded sample would save the second pass over the
images when the features do not fit the memory budget. This compares both with the full fit on
the clustering features of a random LeNet-5 (the cycle-1 features) of the 60,000 Fashion-MNIST
training images, PCA 64 + whitening + L2, then k-means k = 100 (seed 0).

    python experiments/pca_moments_vs_sample.py
"""

import os

import numpy as np
import torch

from deepcluster.cluster import cluster_features, nmi
from deepcluster.cluster.preprocess import Preprocessor
from deepcluster.core.config import TrainConfig, build_config
from deepcluster.core.precision import resolve_precision
from deepcluster.data.splits import load_train_data, normalization
from deepcluster.features import FeatureOptions, extract_features
from deepcluster.runs import build_network

torch.set_num_threads(2)
root = os.environ.get("FMNIST", "/usr/share/datasets/fashion-mnist")
cfg = build_config(TrainConfig, "configs/fmnist_lenet.yaml", [f"data.root={root}"])
data = load_train_data(cfg)
images = data.images_tensor()
model = build_network(cfg, 1, 28)
x = next(iter(extract_features(model, images, FeatureOptions(*normalization(cfg, 1), show_progress=False,
                                                              precision=resolve_precision("fp32", "cpu"))).values()))
x = np.ascontiguousarray(x, dtype=np.float32)


def pre() -> Preprocessor:
    return Preprocessor(pca_dim=cfg.pca_dim, eigen_power=-0.5, on_degenerate="truncate")


full = pre().fit_transform(x)
streamed = pre()
for lo in range(0, len(x), 1024):
    streamed.partial_fit(x[lo : lo + 1024])
streamed = streamed.finalize().transform(x)
a_full = cluster_features(full, "kmeans", 100, niter=20, seed=0).assignments
rows = [("streamed moments (1,024-row chunks)", streamed)]
for frac in (0.1, 0.02):
    idx = np.sort(np.random.default_rng(0).choice(len(x), int(frac * len(x)), replace=False))
    rows.append((f"seeded sample {frac:.0%}", pre().fit(x[idx]).transform(x)))
print(f"{len(x)} x {x.shape[1]} features -> PCA {cfg.pca_dim}, whitened, L2; k-means k=100 seed 0")
probe = np.random.default_rng(1).choice(len(x), 2000, replace=False)
for name, y in rows:
    # cosines between 2,000 rows: unchanged by the arbitrary sign of each principal component
    gap = np.abs(full[probe] @ full[probe].T - y[probe] @ y[probe].T)
    a = cluster_features(y, "kmeans", 100, niter=20, seed=0).assignments
    print(f"  {name:<36} cosines: max |diff| {gap.max():.2e}, mean {gap.mean():.2e}; "
          f"NMI(assignments, full fit's) {nmi(a_full, a):.3f}, identical {np.mean(a == a_full):.1%}")
