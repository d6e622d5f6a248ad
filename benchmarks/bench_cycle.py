"""One DeepCluster cycle on the whole Fashion-MNIST train split (LeNet-5), phase by phase, against a
plain PyTorch + faiss script of the same cycle (``plain_cycle.py``), timed in turn in one run:

- the product: ``deepcluster train -c fmnist_lenet --set cycles=1`` (its own process; the phases'
  seconds from the run's ``metrics.jsonl``), at the precision ``auto`` picks per phase;
- the plain baseline: the same model, batch, data in memory, k, PCA and augmentation, at the
  precisions the product used (its own process);

``BENCH_CYCLE_ROUNDS`` rounds (default 3), the order alternating; the ratio plain / product of each
phase is taken round by round (≥ 1.0: the product is no slower) and the median is reported.
Then the alternatives our choices replace, timed beside them:

- batched augmentation (one affine grid_sample per batch) vs torchvision's per-image
  RandomResizedCrop + RandomHorizontalFlip loop;
- the project's k-means (its backend chosen by problem size) vs faiss's and scikit-learn's KMeans
  (same k, 20 iterations, one init).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import torch
from _results import record
from sklearn.cluster import KMeans
from torchvision.transforms import v2

from deepcluster.cluster import Preprocessor, kmeans
from deepcluster.core.config import TrainConfig, build_config
from deepcluster.data import dataset_stats, load_dataset
from deepcluster.data.transforms import normalize
from deepcluster.features import FeatureOptions, extract_features
from deepcluster.runs import build_network
from deepcluster.train.augment import random_resized_crop_flip

ROOT = os.environ.get("FMNIST", "/usr/share/datasets/fashion-mnist")
ROUNDS = int(os.environ.get("BENCH_CYCLE_ROUNDS", "3"))
HERE = Path(__file__).resolve().parent
PHASES = ("features", "pca", "clustering", "training")
env = {**os.environ, "DEEPCLUSTER_PROGRESS": "0"}


def product(out: Path) -> tuple[dict[str, float], dict[str, str], float]:
    """One cycle through the CLI: (seconds per phase, precision per phase, wall seconds of the command)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deepcluster", "train", "-c", "fmnist_lenet", "--set", "cycles=1",
                    "--set", f"data.root={ROOT}", "-o", str(out), "-q"], check=True, env=env, cwd=HERE.parent,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    precision = {"features": rec["precision"], "training": rec.get("training_precision", rec["precision"])}
    return rec["seconds"], precision, wall


def plain(precision: dict[str, str]) -> dict[str, float]:
    """The plain script's cycle at the product's precisions (its own process)."""
    args = [sys.executable, str(HERE / "plain_cycle.py"), "--root", ROOT,
            "--features-precision", precision["features"].split("+")[0],
            "--training-precision", precision["training"].split("+")[0]]
    res = subprocess.run(args, check=True, env=env, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


print(f"torch threads: {torch.get_num_threads()}, faiss threads: {faiss.omp_get_max_threads()}, rounds: {ROUNDS}")
rows: dict[str, list[dict[str, float]]] = {"product": [], "plain": []}
walls = []
with tempfile.TemporaryDirectory() as tmp:
    precision = None
    for r in range(ROUNDS):
        order = ("product", "plain") if r % 2 == 0 else ("plain", "product")
        if precision is None:  # the plain script needs the product's precisions: the product goes first
            order = ("product", "plain")
        for who in order:
            if who == "product":
                secs, precision, wall = product(Path(tmp) / f"run{r}")
                walls.append(wall)
            else:
                secs = plain(precision)
            rows[who].append({p: float(secs.get(p, 0.0)) for p in PHASES})
            rows[who][-1]["cycle"] = sum(rows[who][-1].values())
print(f"precision per phase (product's auto, used by both): features {precision['features']}, "
      f"training {precision['training']}")
print(f"{'phase':<11}{'product (s)':>22}{'plain (s)':>22}{'plain/product':>15}   (median of {ROUNDS} rounds; goal >= 1.0)")
for phase in (*PHASES, "cycle"):
    prod = [row[phase] for row in rows["product"]]
    base = [row[phase] for row in rows["plain"]]
    ratios = [b / max(p, 1e-9) for p, b in zip(prod, base)]
    ratio = statistics.median(ratios)
    span = lambda v: f"{min(v):5.2f}-{max(v):5.2f}" if len(v) > 1 else f"{v[0]:5.2f}"  # noqa: E731
    verdict = "" if phase == "cycle" else ("  ok" if ratio >= 1.0 else "  SLOWER")
    print(f"{phase:<11}{span(prod):>22}{span(base):>22}{'x' + format(ratio, '.2f'):>15}{verdict}")
    record(f"cycle.{phase}.product_s", statistics.median(prod), "s")
    record(f"cycle.{phase}.plain_over_product", ratio, "x", better="higher", note="goal >= 1.0")
print(f"the CLI command of one cycle, start to end: {statistics.median(walls):.1f} s (median; data loading, "
      f"start-up, metrics and checkpoint included); moonshot: a LeNet cycle <= 4 s")

# augmentation: batched vs per-image torchvision
data = load_dataset("fashion-mnist", ROOT, split="train")
images = data.images_tensor()
stats = dataset_stats("fashion-mnist")
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
record("augment.batched_over_torchvision", theirs / ours, "x", better="higher")

# k-means: ours (backend by problem size) vs faiss's and scikit-learn's, on a cycle's whitened features
cfg = build_config(TrainConfig, "fmnist_lenet", [f"data.root={ROOT}"])
model = build_network(cfg, 1, 28)
reader = FeatureOptions(*stats, batch_size=cfg.feature_batch_size, show_progress=False)
x = extract_features(model, images, reader)["embed"]
x = Preprocessor(pca_dim=cfg.pca_dim, on_degenerate="truncate").fit_transform(x)


def best_of(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def faiss_kmeans(x, k: int):
    """faiss's k-means fitted on every row (FAIR's setting: no subsample of 256 rows per centroid),
    then every row assigned, as ``kmeans`` does."""
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=0, max_points_per_centroid=10**7)
    km.train(x)
    return km.index.search(x, 1)[1]


for k in (10, 100, 200):
    ours = best_of(lambda k=k: kmeans(x, k, niter=20, seed=0))
    fa = best_of(lambda k=k: faiss_kmeans(x, k))
    sk = best_of(lambda k=k: KMeans(k, n_init=1, max_iter=20, tol=0, random_state=0).fit(x))
    print(f"k-means k={k} on {x.shape} (best of 3): ours {ours:.3f}s, faiss.Kmeans {fa:.3f}s, scikit-learn "
          f"{sk:.3f}s; fastest other / ours x{min(fa, sk) / ours:.2f}")
    record(f"kmeans.k{k}.best_other_over_ours", min(fa, sk) / ours, "x", better="higher")
