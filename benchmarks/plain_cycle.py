"""A plain PyTorch + faiss DeepCluster cycle: the baseline ``bench_cycle.py`` times the product against.

The same work as one cycle of ``deepcluster train -c fmnist_lenet`` (Caron et al.'s Algorithm 1),
written as a short script would write it, without any of the package's code on the timed path:

1. features of the 60,000 Fashion-MNIST training images (LeNet-5 + BatchNorm, eval mode, batches
   of 1,024, pre-ReLU 84-d output of the classifier);
2. PCA-whitening to 64 dimensions and L2 normalisation (faiss ``PCAMatrix``, ``eigen_power=-0.5``);
3. k-means, k = 100, 20 iterations on every row (faiss ``Kmeans``, ``max_points_per_centroid`` raised
   as FAIR's code does), then the assignment of every row;
4. a new top layer (84 → k), and one epoch of SGD (lr 0.1, momentum 0.1, weight decay 1e-3,
   batch 128) sampling uniformly over clusters (FAIR's ``UnifLabelSampler``), each batch
   normalised and augmented by a random resized crop (area 0.5–1) and a horizontal flip as one
   ``affine_grid`` + ``grid_sample`` call.

``--features-precision`` and ``--training-precision`` (fp32 or bf16) say how the forward passes
run (bf16: ``torch.autocast``, channels_last for the feature pass, as the product does). Prints one
JSON line: seconds per phase. Run: ``python benchmarks/plain_cycle.py [--training-precision bf16]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST, as the package's dataset_stats


def read_idx_images(root: Path) -> torch.Tensor:
    """The training images as a uint8 tensor N × 1 × 28 × 28."""
    path = root / "train-images-idx3-ubyte"
    raw = gzip.open(f"{path}.gz").read() if not path.exists() else path.read_bytes()
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, h, w).copy())


def lenet() -> nn.Module:
    def block(i, o, pad):
        return [nn.Conv2d(i, o, 5, padding=pad), nn.BatchNorm2d(o), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

    return nn.Sequential(*block(1, 6, 2), *block(6, 16, 0), nn.Flatten(),
                         nn.Linear(400, 120), nn.BatchNorm1d(120), nn.ReLU(inplace=True), nn.Linear(120, 84))


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def features(net: nn.Module, images: torch.Tensor, precision: str) -> np.ndarray:
    net.eval()
    cl = precision == "bf16"
    if cl:
        net.to(memory_format=torch.channels_last)
    out = []
    with torch.no_grad(), autocast(precision):
        for s in range(0, len(images), 1024):
            x = (images[s:s + 1024].float() / 255 - MEAN) / STD
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(net(x).float())
    net.to(memory_format=torch.contiguous_format)
    return torch.cat(out).numpy()


def uniform_sampler(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    clusters = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    per = n // len(clusters) + 1
    res = np.concatenate([rng.choice(m, per, replace=len(m) < per) for m in clusters])
    rng.shuffle(res)
    return res[:n]


def crop_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = len(x)
    area = torch.empty(n).uniform_(0.5, 1.0, generator=g)
    r = torch.exp(torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g))
    sx, sy = torch.sqrt(area * r).clamp(max=1), torch.sqrt(area / r).clamp(max=1)
    tx, ty = (torch.rand(n, generator=g) * 2 - 1) * (1 - sx), (torch.rand(n, generator=g) * 2 - 1) * (1 - sy)
    sx = torch.where(torch.rand(n, generator=g) < 0.5, -sx, sx)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def cycle(images: torch.Tensor, k: int = 100, pca_dim: int = 64, feat_prec: str = "fp32",
          train_prec: str = "fp32", seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    net = lenet()
    body = [p for n, p in net.named_parameters()]
    opt = torch.optim.SGD([{"params": [p for p in body if p.ndim > 1]},
                           {"params": [p for p in body if p.ndim <= 1], "weight_decay": 0.0}],
                          lr=0.1, momentum=0.1, weight_decay=1e-3)
    sec = {}
    t = time.perf_counter()
    x = features(net, images, feat_prec)
    sec["features"] = time.perf_counter() - t
    t = time.perf_counter()
    pca = faiss.PCAMatrix(x.shape[1], pca_dim, -0.5)
    pca.train(x)
    x = pca.apply(x)
    faiss.normalize_L2(x)
    sec["pca"] = time.perf_counter() - t
    t = time.perf_counter()
    km = faiss.Kmeans(pca_dim, k, niter=20, seed=seed, max_points_per_centroid=10**7)  # all rows, as FAIR's
    km.train(x)
    labels = km.index.search(x, 1)[1][:, 0]
    sec["clustering"] = time.perf_counter() - t
    t = time.perf_counter()
    top = nn.Linear(84, k)
    nn.init.normal_(top.weight, 0, 0.01)
    nn.init.zeros_(top.bias)
    top_opt = torch.optim.SGD(top.parameters(), lr=0.1, weight_decay=1e-3)
    order = torch.from_numpy(uniform_sampler(labels, len(images), np.random.default_rng(seed)))
    y_all = torch.from_numpy(labels.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    net.train()
    loss_sum = torch.zeros(())
    for idx in order.split(128):
        xb = crop_flip((images[idx].float() / 255 - MEAN) / STD, g)
        with autocast(train_prec):
            loss = F.cross_entropy(top(F.relu(net(xb))), y_all[idx])
        opt.zero_grad(set_to_none=True)
        top_opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        top_opt.step()
        loss_sum += loss.detach().float()
    if not math.isfinite(float(loss_sum)):
        raise SystemExit("non-finite loss")
    sec["training"] = time.perf_counter() - t
    return sec


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.environ.get("FMNIST", "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--features-precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--training-precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--k", type=int, default=100)
    a = ap.parse_args()
    imgs = read_idx_images(Path(a.root))
    print(json.dumps(cycle(imgs, k=a.k, feat_prec=a.features_precision, train_prec=a.training_precision)), flush=True)
