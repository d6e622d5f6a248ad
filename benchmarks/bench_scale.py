"""Data beyond RAM, side by side in one run (docs/data.md):

1. Clustering at ImageNet size: 1,281,167 × 256 float32 features (a seeded synthetic mixture of
   10,000 Gaussians, L2-normalised as the cycle's features are), k = 10,000, 20 iterations, with
   ``fit_fraction`` 0.1 and 0.05 (faiss) and scikit-learn's MiniBatchKMeans (one epoch) as the
   reference: seconds, peak RSS, NMI to the mixture's components and between the assignments.
   The full fit takes about ten minutes here: ``BENCH_SCALE_FULL=1`` adds it.
2. Streaming vs in memory: one LeNet cycle on the 60,000 Fashion-MNIST training images (a) in
   memory, (b) ingested at 28 px and streamed from the file, (c) streamed from a folder of PNG
   files written here (RGB, as the folder loader reads them): images/s of the feature pass and of
   the training epoch.
3. Memory flat in N: pools of 50,000 and 200,000 generated 64 px images (Fashion-MNIST upsampled
   ×2 at random offsets), ingested, then one small-AlexNet cycle with ``pool_subset`` 10,000,
   streamed: the peak RSS of both runs, and the N × (pca_dim + 1) × 4 bytes the design allows.
4. WebDataset shards: ``tarfile`` (what ``deepcluster data ingest`` uses) vs the ``webdataset``
   package when it is installed (it is not a dependency).

Each measurement runs in its own process; peak RSS is that process's own (its ``VmHWM``; the
DataLoader workers' memory is not added).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = os.environ.get("FMNIST", "/usr/share/datasets/fashion-mnist")
HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
N, D, K = 1_281_167, 256, 10_000
env = {**os.environ, "DEEPCLUSTER_PROGRESS": "0"}


def _mixture(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((K, D), dtype=np.float32)
    labels = rng.integers(0, K, N)
    x = centres[labels]
    x += 0.8 * rng.standard_normal((N, D), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_cluster(method: str, fraction: float, out: str) -> None:
    """One clustering of the mixture, in this process: prints a JSON line, saves the assignments."""
    x, _ = _mixture()
    t = time.perf_counter()
    if method == "faiss":
        from deepcluster.cluster import cluster_features

        a = cluster_features(x, "kmeans", K, niter=20, seed=0, fit_fraction=fraction).assignments
    else:
        from sklearn.cluster import MiniBatchKMeans

        mb = MiniBatchKMeans(K, batch_size=8192, max_iter=1, n_init=1, random_state=0, compute_labels=False)
        a = mb.fit(x).predict(x)
    seconds = time.perf_counter() - t
    np.save(out, np.asarray(a, dtype=np.int32))
    print(json.dumps({"seconds": seconds, "peak_mb": _peak_mb()}), flush=True)


def _hwm_mb(pid: int) -> float | None:
    """Peak resident memory of process ``pid`` since its exec (``VmHWM``), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _popen_rss(args: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a command; (result, seconds, its peak RSS in MB).

    The peak is the child's own ``VmHWM``, read until it exits: ``wait4``'s ``ru_maxrss`` would
    count the pages of this (large) process that the child held between fork and exec.
    """
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True, env=env, cwd=REPO)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _hwm_mb(proc.pid) or 0.0)
            time.sleep(0.1)
        out.seek(0)
        err.seek(0)
        res = subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read())
    return res, time.perf_counter() - t, peak


def _check(res: subprocess.CompletedProcess) -> None:
    if res.returncode:
        print(res.stdout + res.stderr)
        sys.exit(1)


def clustering(tmp: Path) -> None:
    from sklearn.metrics import normalized_mutual_info_score as nmi

    settings = [("faiss", 0.1), ("faiss", 0.05), ("sklearn", 1.0)]
    if os.environ.get("BENCH_SCALE_FULL"):
        settings.insert(0, ("faiss", 1.0))
    _, truth = _mixture()
    rows = {}
    for method, fraction in settings:
        name = ("faiss k-means, fit_fraction " + f"{fraction:g}") if method == "faiss" else "sklearn MiniBatchKMeans (1 epoch)"
        out = tmp / f"{method}_{fraction}.npy"
        res, _, _ = _popen_rss([sys.executable, str(HERE), "cluster", method, str(fraction), str(out)])
        _check(res)
        rows[name] = (json.loads(res.stdout.strip().splitlines()[-1]), np.load(out))
    ref_name = next(iter(rows))
    print(f"clustering {N:,} x {D} float32, k = {K:,}, 20 iterations (2 threads):")
    for name, (m, a) in rows.items():
        line = (f"  {name:<34} {m['seconds']:7.1f} s  peak RSS {m['peak_mb'] / 1024:5.2f} GB  "
                f"NMI to the mixture {nmi(truth, a):.3f}")
        if name != ref_name:
            line += f"  NMI to {ref_name.split(', ')[-1]} {nmi(rows[ref_name][1], a):.3f}"
        print(line, flush=True)
    f10, f05 = (rows[f"faiss k-means, fit_fraction {f}"][0]["seconds"] for f in ("0.1", "0.05"))
    print(f"  time fit_fraction 0.05 vs 0.1: x{f10 / f05:.2f}")


def _write_png_folder(root: Path) -> float:
    from PIL import Image

    from deepcluster.data import load_dataset

    data = load_dataset("fashion-mnist", ROOT)
    images, labels = data.images_tensor().numpy()[:, 0], data.labels
    t = time.perf_counter()
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
    for i, (img, y) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(root / str(y) / f"{i:05d}.png", compress_level=1)
    return time.perf_counter() - t


def streaming(tmp: Path) -> None:
    from deepcluster.data.pool_writer import ingest

    t = time.perf_counter()
    ingest(ROOT, tmp / "pool", show_progress=False)
    ingest_s = time.perf_counter() - t
    png_s = _write_png_folder(tmp / "png")
    t = time.perf_counter()
    ingest(tmp / "png", tmp / "pool_png", size=28, channels=1, workers=2, show_progress=False)
    ingest_png_s = time.perf_counter() - t
    print(f"ingest of the 60,000 Fashion-MNIST images: from IDX {ingest_s:.1f} s; writing them as PNG "
          f"{png_s:.1f} s; ingest of the PNG folder (2 workers) {ingest_png_s:.1f} s "
          f"({60000 / ingest_png_s:,.0f} images/s)")
    # 30 MB: the pixels (47 MB, 141 MB as RGB) are streamed, the 60,000 x 84 features are kept
    cases = {
        "(a) in memory": ["--set", f"data.root={ROOT}"],
        "(b) ingested, streamed": ["--set", "data.name=ingested", "--set", f"data.root={tmp / 'pool'}",
                                   "--set", "data.memory_budget_mb=30"],
        "(c) PNG folder, streamed (RGB)": ["--set", "data.name=folder", "--set", f"data.root={tmp / 'png'}",
                                           "--set", "data.image_size=28", "--set", "data.test_split=null",
                                           "--set", "data.memory_budget_mb=30"],
    }
    rows = {}
    for name, sets in cases.items():
        out = tmp / name[1]
        res, wall, rss = _popen_rss([sys.executable, "-m", "deepcluster", "train", "-c", "configs/fmnist_lenet.yaml",
                                     "--set", "cycles=1", *sets, "-o", str(out), "-q"])
        _check(res)
        rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        rows[name] = rec
        s = rec["seconds"]
        print(f"  {name:<32} features {60000 / s['features']:7,.0f} img/s  training {60000 / s['training']:6,.0f} img/s"
              f"  cycle {sum(s.values()):5.1f} s  peak RSS {rss:5.0f} MB  [{rec['images']}]", flush=True)
    a, b = rows["(a) in memory"]["seconds"], rows["(b) ingested, streamed"]["seconds"]
    print(f"  ingested vs in memory: features x{a['features'] / b['features']:.2f}, training "
          f"x{a['training'] / b['training']:.2f}, cycle x{sum(a.values()) / sum(b.values()):.2f} (goal >= 0.8)")


def _write_idx_pool(root: Path, n: int) -> None:
    from deepcluster.data import load_dataset

    src = load_dataset("fashion-mnist", ROOT)
    base = np.repeat(np.repeat(src.images_tensor().numpy()[:, 0], 2, axis=1), 2, axis=2)  # 56 px
    rng = np.random.default_rng(n)
    which, dy, dx = rng.integers(0, len(base), n), rng.integers(0, 9, n), rng.integers(0, 9, n)
    root.mkdir(parents=True)
    with open(root / "train-images-idx3-ubyte", "wb") as f:
        f.write((0x803).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (n, 64, 64)))
        for lo in range(0, n, 10000):
            hi = min(lo + 10000, n)
            canvas = np.zeros((hi - lo, 64, 64), dtype=np.uint8)
            for j in range(lo, hi):
                canvas[j - lo, dy[j] : dy[j] + 56, dx[j] : dx[j] + 56] = base[which[j]]
            f.write(canvas.tobytes())
    with open(root / "train-labels-idx1-ubyte", "wb") as f:
        f.write((0x801).to_bytes(4, "big") + n.to_bytes(4, "big") + np.asarray(src.labels)[which].astype(np.uint8).tobytes())


def memory(tmp: Path) -> None:
    from deepcluster.data.pool_writer import ingest

    peaks = {}
    pca_dim = 256
    for n in (50_000, 200_000):
        _write_idx_pool(tmp / f"idx{n}", n)
        ingest(tmp / f"idx{n}", tmp / f"pool{n}", show_progress=False)
        for p in (tmp / f"idx{n}").iterdir():
            p.unlink()
        out = tmp / f"alexnet{n}"
        res, wall, rss = _popen_rss([
            sys.executable, "-m", "deepcluster", "train", "-c", "configs/cifar10_small_alexnet.yaml",
            "--set", "data.name=ingested", "--set", f"data.root={tmp / f'pool{n}'}", "--set", "data.test_split=null",
            "--set", "data.memory_budget_mb=64", "--set", "pool_subset=10000", "--set", "k=100",
            "--set", f"pca_dim={pca_dim}", "--set", "cycles=1", "-o", str(out), "-q"])
        _check(res)
        rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        peaks[n] = rss
        print(f"  pool {n:>7,} images at 64 px ({n * 4096 / 2**20:,.0f} MB of pixels): peak RSS {rss:6.0f} MB, "
              f"cycle {sum(rec['seconds'].values()):.1f} s, {wall:.1f} s in all  [{rec['images']}]", flush=True)
    allowed = (200_000 - 50_000) * (pca_dim + 1) * 4 / 2**20
    print(f"  peak RSS 200k - 50k: {peaks[200_000] - peaks[50_000]:+.0f} MB (the design allows {allowed:.0f} MB)")


def _shards(root: Path, n_shards: int = 8, per_shard: int = 1000) -> None:
    import io
    import tarfile

    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir()
    for s in range(n_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
                for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def tar(tmp: Path) -> None:
    """WebDataset shards: the ``webdataset`` package vs the standard library's ``tarfile`` (what
    ingest uses), decoding the same JPEGs to 32 px, in one process and with 2 workers."""
    import torch
    import torchvision.transforms.functional as TF

    from deepcluster.data.pool_writer import ingest

    _shards(tmp / "shards")
    n = 8000
    for workers in (0, 2):
        t = time.perf_counter()
        ingest(tmp / "shards", tmp / f"tar_pool{workers}", size=32, workers=workers, show_progress=False)
        s = time.perf_counter() - t
        print(f"  tarfile (deepcluster data ingest, {workers} workers): {n / s:7,.0f} images/s, written and checksummed")
    try:
        import webdataset as wds
    except ImportError:
        print("  webdataset: not installed (pip install webdataset==1.0.2 to compare)")
        return

    def resize(sample):
        img = TF.pil_to_tensor(sample[0].convert("RGB"))
        return TF.resize(img, [32, 32], antialias=True), sample[1]

    urls = [str(p) for p in sorted((tmp / "shards").glob("*.tar"))]
    for workers in (0, 2):
        ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node,
                            workersplitter=wds.split_by_worker).decode("pil").to_tuple("jpg", "cls").map(resize)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
        t = time.perf_counter()
        count = sum(1 for _ in loader)
        s = time.perf_counter() - t
        print(f"  webdataset {wds.__version__ if hasattr(wds, '__version__') else ''} ({workers} workers): "
              f"{count / s:7,.0f} images/s, decoded only (sequential: no random access, no resume)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "cluster":
        child_cluster(sys.argv[2], float(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    parts = sys.argv[1:] or ["clustering", "streaming", "memory", "tar"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for part in parts:
            print(f"--- {part}", flush=True)
            globals()[part](Path(tmp))
