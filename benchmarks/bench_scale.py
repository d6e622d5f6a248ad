"""Data beyond RAM, side by side in one run (docs/data.md):

1. Clustering at ImageNet size: 1,281,167 × 256 float32 features (a seeded synthetic mixture of
   10,000 Gaussians, L2-normalised as the cycle's features are), k = 10,000, 20 iterations, with
   ``fit_fraction`` 0.1 and 0.05 (the project's ``kmeans``: its backend by problem size, here
   Lloyd's iterations with bf16 distances and an exact fp32 re-check where the CPU has bf16) and
   scikit-learn's MiniBatchKMeans (one epoch) as the reference: seconds, peak RSS, NMI to the
   mixture's components and between the assignments. ``BENCH_SCALE_BEFORE=1`` adds the code
   before it (faiss's fit, then an fp32 BLAS assignment) at both fractions;
   ``BENCH_SCALE_FULL=1`` adds the fit on all rows.
2. Streaming vs in memory: one LeNet cycle on the 60,000 Fashion-MNIST training images (a) in
   memory, (b) ingested at 28 px and streamed from the file, (c) streamed from a folder of PNG
   files written here (RGB, as the folder loader reads them): images/s of the feature pass and of
   the training epoch.
3. Memory in N: pools of 50,000 and 200,000 generated images (Fashion-MNIST upsampled ×2 at
   random offsets), ingested at 32 px grey, then one fmnist_lenet cycle with ``pool_subset``
   20,000, in memory (default budget) and streamed (``memory_budget_mb=0``): the peak RSS of the
   four runs side by side, the growth of each path, and what the design allows (the extra pixels,
   in memory, plus N × (pca_dim + 1) × 4 bytes).
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
from _results import record

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
    """One clustering of the mixture, in this process: prints a JSON line, saves the assignments.

    ``kmeans``: the project's ``kmeans`` as it is; ``before``: the same with the fit left to faiss
    and the assignment in fp32 BLAS blocks (the code before Lloyd's iterations and bf16 came);
    ``sklearn``: MiniBatchKMeans, one epoch."""
    x, _ = _mixture()
    t = time.perf_counter()
    if method in ("kmeans", "before"):
        from deepcluster.cluster import cluster_features, faiss_kmeans, nearest

        if method == "before":
            faiss_kmeans.LLOYD_MIN_WORK = 1 << 62
            nearest.use_bf16 = lambda n, k, d: False
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

    settings = [("kmeans", 0.1), ("kmeans", 0.05), ("sklearn", 1.0)]
    if os.environ.get("BENCH_SCALE_BEFORE"):
        settings += [("before", 0.1), ("before", 0.05)]
    if os.environ.get("BENCH_SCALE_FULL"):
        settings.insert(0, ("kmeans", 1.0))
    labels = {"kmeans": "k-means", "before": "before: faiss fit + fp32 assign"}
    _, truth = _mixture()
    rows = {}
    for method, fraction in settings:
        name = (f"{labels[method]}, fit_fraction {fraction:g}" if method in labels
                else "sklearn MiniBatchKMeans (1 epoch)")
        out = tmp / f"{method}_{fraction}.npy"
        res, _, _ = _popen_rss([sys.executable, str(HERE), "cluster", method, str(fraction), str(out)])
        _check(res)
        rows[name] = (json.loads(res.stdout.strip().splitlines()[-1]), np.load(out))
    ref_name = next(iter(rows))
    print(f"clustering {N:,} x {D} float32, k = {K:,}, 20 iterations (2 threads):")
    for name, (m, a) in rows.items():
        line = (f"  {name:<46} {m['seconds']:7.1f} s  peak RSS {m['peak_mb'] / 1024:5.2f} GB  "
                f"NMI to the mixture {nmi(truth, a):.3f}")
        if name != ref_name:
            line += f"  NMI to {ref_name.split(', ')[-1]} {nmi(rows[ref_name][1], a):.3f}"
        print(line, flush=True)
    sec = {name: m["seconds"] for name, (m, _) in rows.items()}
    f10, f05 = (sec[f"k-means, fit_fraction {f}"] for f in ("0.1", "0.05"))
    print(f"  time fit_fraction 0.05 vs 0.1: x{f10 / f05:.2f}")
    record("scale.kmeans_1.28M_k10000.fit0.1_s", f10, "s", note="goal <= 90")
    record("scale.kmeans_1.28M_k10000.fit0.05_s", f05, "s", note="goal <= 60")
    for f in ("0.1", "0.05"):
        before = sec.get(f"{labels['before']}, fit_fraction {f}")
        if before is not None:
            print(f"  fit_fraction {f}: x{before / sec[f'k-means, fit_fraction {f}']:.2f} faster than before")


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
    record("scale.ingested_over_in_memory_cycle", sum(a.values()) / sum(b.values()), "x", better="higher",
           note="goal >= 0.8")


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


# ``deepcluster`` that prints its own peak RSS (VmHWM) when it exits, from an atexit handler: before
# the interpreter's teardown, which raises VmHWM by ~130 MB for torch alone, by a different amount
# from one run to the next (measured: `import torch` peaks at 519 MB, then 647 MB once torn down).
_PEAK_AT_EXIT = (
    "import atexit, sys\n"
    "def _peak():\n"
    "    hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')]\n"
    "    print('PEAK_KB', *hwm, file=sys.stderr, flush=True)\n"
    "atexit.register(_peak)\n"
    "from deepcluster.cli import main\n"
    "main()\n"
)


def _run_peak_mb(res: subprocess.CompletedProcess) -> float:
    """The peak :data:`_PEAK_AT_EXIT` printed, in MB."""
    return next(int(line.split()[1]) / 1024 for line in res.stderr.splitlines() if line.startswith("PEAK_KB "))


def memory(tmp: Path) -> None:
    """Peak RSS of one fmnist_lenet cycle (``pool_subset`` 20,000) on ingested 32-px grey pools of
    50,000 and 200,000 images, in memory (the default budget) and streamed (``memory_budget_mb=0``),
    side by side: the growth of each path with the pool and the bound the design allows. The peak
    is the run's own, before the interpreter's teardown (:data:`_PEAK_AT_EXIT`); the process's
    VmHWM until it is gone is printed with each run."""
    from deepcluster.data.pool_writer import ingest

    pca_dim, sizes, item = 64, (50_000, 200_000), 32 * 32
    paths = {"in memory": [], "streamed": ["--set", "data.memory_budget_mb=0"]}
    peaks: dict[tuple[str, int], float] = {}
    for n in sizes:
        _write_idx_pool(tmp / f"idx{n}", n)
        ingest(tmp / f"idx{n}", tmp / f"pool{n}", size=32, show_progress=False)
        for p in (tmp / f"idx{n}").iterdir():
            p.unlink()
        for name, sets in paths.items():
            out = tmp / f"lenet{n}_{name.replace(' ', '_')}"
            res, wall, hwm = _popen_rss([
                sys.executable, "-c", _PEAK_AT_EXIT, "train", "-c", "configs/fmnist_lenet.yaml",
                "--set", "data.name=ingested", "--set", f"data.root={tmp / f'pool{n}'}", "--set", "data.test_split=null",
                "--set", "pool_subset=20000", "--set", f"pca_dim={pca_dim}", "--set", "cycles=1", *sets,
                "-o", str(out), "-q"])
            _check(res)
            rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
            peaks[name, n] = rss = _run_peak_mb(res)
            print(f"  pool {n:>7,} images at 32 px ({n * item / 2**20:,.0f} MB of pixels), {name:9}: peak RSS "
                  f"{rss:6.0f} MB ({hwm:.0f} MB torn down), cycle {sum(rec['seconds'].values()):5.1f} s, "
                  f"{wall:5.1f} s in all  [{rec['images']}]", flush=True)
    lo, hi = sizes
    extra_pixels = (hi - lo) * item / 2**20
    per_image = (hi - lo) * (pca_dim + 1) * 4 / 2**20
    print(f"  {'':10} {f'{lo:,} images':>15} {f'{hi:,} images':>15} {'growth':>8}  bound the design allows")
    for name in paths:
        bound, why = ((extra_pixels + per_image, f"{extra_pixels:.0f} MB of extra pixels + N x (pca_dim + 1) x 4 = "
                       f"{per_image:.0f} MB") if name == "in memory" else (per_image, "N x (pca_dim + 1) x 4"))
        growth = peaks[name, hi] - peaks[name, lo]
        record(f"scale.memory.{name.strip().replace(' ', '_')}.growth_mb", growth, "MB", note=f"bound {bound:.0f}")
        print(f"  {name:10} {peaks[name, lo]:12,.0f} MB {peaks[name, hi]:12,.0f} MB {growth:+6.0f} MB  "
              f"{bound:.0f} MB ({why}){'' if growth <= bound else '  EXCEEDED'}")


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
