"""One DeepCluster cycle on the whole Fashion-MNIST train split (LeNet-5), phase by phase,
with the alternatives our choices replace timed beside them:

- batched augmentation (one affine grid_sample per batch) vs torchvision's per-image
  RandomResizedCrop + RandomHorizontalFlip loop;
- faiss k-means vs scikit-learn's KMeans (same k, 20 iterations, one init).
"""

import os
import time

import torch
from sklearn.cluster import KMeans
from torchvision.transforms import v2

from deepcluster.cluster import Preprocessor, kmeans
from deepcluster.core.config import TrainConfig, build_config
from deepcluster.data import dataset_stats, load_dataset
from deepcluster.data.source import as_source
from deepcluster.data.transforms import normalize
from deepcluster.features import FeatureOptions, extract_features
from deepcluster.runs import build_network
from deepcluster.train.augment import random_resized_crop_flip
from deepcluster.train.cycle import make_optimizer, run_cycle

ROOT = os.environ.get("FMNIST", "/usr/share/datasets/fashion-mnist")
cfg = build_config(TrainConfig, "configs/fmnist_lenet.yaml", [f"data.root={ROOT}"])
data = load_dataset("fashion-mnist", ROOT, split="train")
images = data.images_tensor()
stats = dataset_stats("fashion-mnist")
model = build_network(cfg, 1, 28)
print(f"torch threads: {torch.get_num_threads()}, images: {tuple(images.shape)}")

reader = FeatureOptions(*stats, batch_size=cfg.feature_batch_size, show_progress=False)
t = time.perf_counter()
outcome = run_cycle(model, as_source(images), make_optimizer(model, cfg), cfg, reader, cycle=1,
                    generator=torch.Generator().manual_seed(0))
t2 = time.perf_counter()
phases = outcome.seconds
print("cycle phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()) + f"; total {t2 - t:.2f}")

# augmentation: batched vs per-image torchvision
batch = images[:4096]
t = time.perf_counter()
for s in range(0, len(batch), 128):
    random_resized_crop_flip(normalize(batch[s:s + 128], *stats), scale=(0.5, 1.0), generator=torch.Generator().manual_seed(s))
ours = time.perf_counter() - t
tv = v2.Compose([v2.RandomResizedCrop(28, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                 v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)])
t = time.perf_counter()
for s in range(0, len(batch), 128):
    torch.stack([tv(img) for img in batch[s:s + 128]])
theirs = time.perf_counter() - t
print(f"augmentation of 4096 images: batched {ours:.3f}s, torchvision per-image {theirs:.3f}s, "
      f"speed-up x{theirs / ours:.1f}")

# k-means: faiss vs scikit-learn on the whitened features of this cycle

x = extract_features(model, images, reader)["embed"]
x = Preprocessor(pca_dim=cfg.pca_dim, on_degenerate="truncate").fit_transform(x)
t = time.perf_counter()
kmeans(x, 10, niter=20, seed=0)
fa = time.perf_counter() - t
t = time.perf_counter()
KMeans(10, n_init=1, max_iter=20, tol=0, random_state=0).fit(x)
sk = time.perf_counter() - t
print(f"k-means k=10 on {x.shape}: faiss {fa:.3f}s, scikit-learn {sk:.3f}s, ratio x{sk / fa:.1f}")
t = time.perf_counter()
kmeans(x, 200, niter=20, seed=0)
fa = time.perf_counter() - t
t = time.perf_counter()
KMeans(200, n_init=1, max_iter=20, tol=0, random_state=0).fit(x)
sk = time.perf_counter() - t
print(f"k-means k=200 on {x.shape}: faiss {fa:.3f}s, scikit-learn {sk:.3f}s, ratio x{sk / fa:.1f}")
