"""GPU acceptance check: one command, one table, at most 8 minutes on one GPU.

    python benchmarks/gpu_check.py [--out runs/gpu_check]     # on a machine with CUDA (make gpu-check)
    python benchmarks/gpu_check.py --cpu-smoke --out DIR      # everything tiny, on the CPU (its test)

Sections, each a few rows of one table (also written as gpu_check.json and gpu_check.md to --out,
with every command's stdout/stderr under --out/logs):

- environment: versions (python, torch, torchvision, CUDA, cuDNN, faiss and whether it has GPU
  support), the GPU, the precision ``resolve_precision("auto", device)`` chooses, TF32 switches;
- k-means: the library's torch k-means on the device vs its CPU k-means (faiss, or the Lloyd fit by
  GEMM blocks from k = 256 and n·k·d = 2^32) on a moderate matrix
  (NMI between the assignments, loss ratio, seconds), ``kmeans(device=...)`` as training calls it,
  and a large case (1,281,167 x 256, k = 10,000): seconds per iteration, peak GPU memory;
- digits CLI: train, resume, evaluate, report, ia, export, similarity, dissect, each through
  ``python -m deepcluster`` (exit code, seconds; a failure is recorded and the check goes on);
- alexnet cycle: one cycle of our AlexNet at 224 px on a generated 4,096-image JPEG folder,
  streamed and in memory: seconds per phase, training images/s, GPU utilisation (nvidia-smi);
- distributed: one digits cycle with two ranks on the one GPU over gloo (torchrun) vs one process:
  seconds, and whether cycle 1's assignments are identical.

Past ``--budget-s`` (default 450 s) the remaining steps are skipped with a "skipped: time" row.
Exit code: 0 when every row is ok (or n/a), 1 when a step failed or was skipped, 2 without CUDA
(unless --cpu-smoke).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits_tiny.yaml"
ALEXNET = ROOT / "configs" / "imagenet_alexnet.yaml"
SECTIONS = ("environment", "k-means", "digits CLI", "alexnet cycle", "distributed")
HARD_LIMIT_S = 480  # no command may run past this point of the check (8 minutes)


@dataclass(frozen=True)
class Sizes:
    """How big each section is: the GPU check, or the CPU smoke run that keeps the script alive."""

    device: str
    km_n: int  # moderate k-means: rows, dims, k, iterations
    km_d: int
    km_k: int
    km_iters: int
    big_n: int  # large k-means: rows, dims, k
    big_d: int
    big_k: int
    digits: tuple[str, ...]  # --set overrides of every digits run (training and evaluation)
    report: tuple[str, ...]  # --set overrides of the report
    ia_seeds: int
    ia: tuple[str, ...]
    probe_images: int  # concept probe for dissect
    probe_size: int
    alex_images: int
    alex_px: int
    alex: tuple[str, ...]  # --set overrides of the AlexNet runs
    alex_in_memory_mb: int


GPU = Sizes(
    device="cuda",
    km_n=100_000, km_d=128, km_k=1_000, km_iters=20,
    big_n=1_281_167, big_d=256, big_k=10_000,
    digits=("device=cuda", "eval.probe_epochs=10", "eval.lowshot_repeats=2"),
    report=(),
    ia_seeds=10, ia=(),
    probe_images=200, probe_size=64,
    alex_images=4096, alex_px=224,
    alex=("k=100", "data.workers=8"),
    alex_in_memory_mb=8192,
)

SMOKE = Sizes(
    device="cpu",
    km_n=3_000, km_d=32, km_k=20, km_iters=10,
    big_n=20_000, big_d=32, big_k=100,
    digits=("device=cpu", "threads=1", "eval.probe_epochs=2", "eval.lowshot_n=[1]", "eval.lowshot_repeats=1",
            "eval.knn_ks=[10]"),
    report=("sample=200", "map_points=100", "ascent_steps=5", "ascent_channels=2", "units=4", "queries=2",
            "gallery_clusters=4", "per_cluster=4"),
    ia_seeds=2, ia=("data.limit=300",),
    probe_images=20, probe_size=28,
    alex_images=64, alex_px=32,
    alex=("model.arch=small_alexnet", "k=4", "pca_dim=off", "batch_size=16", "feature_batch_size=32",
          "data.workers=1", "threads=1"),
    alex_in_memory_mb=64,
)


@dataclass
class Row:
    section: str
    check: str
    value: str
    seconds: float | None = None
    status: str = "ok"  # ok, FAIL, n/a, skipped: time
    exit_code: int | None = None  # CLI steps
    order: tuple[int, int] = (0, 0)  # (step, row within it): the table's order whatever ran first


@dataclass
class Task:
    """A step the scheduler starts once the steps it needs have finished."""

    key: int
    section: str
    name: str
    fn: Callable[[], object]
    needs: tuple[Task, ...] = ()
    finished: bool = False


@dataclass
class Outcome:
    """One command's exit code, wall seconds and the last line it wrote (stderr first)."""

    code: int
    seconds: float
    last_line: str


@dataclass
class Check:
    smoke: bool
    sizes: Sizes
    out: Path
    work: Path
    budget_s: float
    jobs: int = 1
    rows: list[Row] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)
    steps: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)

    # ----------------------------------------------------------------------------- bookkeeping

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def add(self, section: str, check: str, value: str, seconds: float | None = None, status: str = "ok",
            exit_code: int | None = None) -> Row:
        with self._lock:
            order = (getattr(self._local, "key", 0), len(self.rows))
            row = Row(section, check, value, None if seconds is None else round(seconds, 2), status, exit_code, order)
            self.rows.append(row)
            secs = "" if row.seconds is None else f" ({row.seconds:.1f} s)"
            print(f"[{self.elapsed():6.1f} s] {section} | {check}: {value}{secs} [{status}]", flush=True)
        return row

    # ----------------------------------------------------------------------------- scheduling

    def task(self, section: str, name: str, fn: Callable[[], object], *needs: Task) -> Task:
        """Schedule a step after ``needs``; :meth:`run_tasks` runs them, ``jobs`` at a time."""
        t = Task(len(self.tasks) + 100, section, name, fn, needs)
        self.tasks.append(t)
        return t

    def run_tasks(self) -> None:
        """Start every task whose needs have finished, in the order they were scheduled, at most
        ``jobs`` at once (1: one after the other, so that timings are the GPU's alone)."""
        done = threading.Condition()
        pending, running = list(self.tasks), 0

        def run(t: Task) -> None:
            nonlocal running
            self._local.key = t.key
            try:
                self.guarded(t.section, t.name, t.fn)
            finally:
                with done:
                    t.finished, running = True, running - 1
                    done.notify_all()

        with done:
            while pending or running:
                ready = [t for t in pending if all(n.finished for n in t.needs)]
                for t in ready[: max(0, self.jobs - running)]:
                    pending.remove(t)
                    running += 1
                    threading.Thread(target=run, args=(t,), daemon=True).start()
                done.wait(timeout=1.0)

    def has_time(self, section: str, check: str) -> bool:
        """False, with a "skipped: time" row, once the budget is spent."""
        if self.elapsed() < self.budget_s:
            return True
        self.add(section, check, f"not run: {self.elapsed():.0f} s of {self.budget_s:.0f} s spent", status="skipped: time")
        return False

    def guarded(self, section: str, check: str, fn: Callable[[], None]) -> None:
        """Run an in-process step; an exception becomes a FAIL row (traceback in the logs)."""
        if not self.has_time(section, check):
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the check records every failure and goes on
            log = self.out / "logs" / f"{_slug(section)}_{_slug(check)}.traceback.txt"
            log.write_text(traceback.format_exc())
            self.add(section, check, f"{type(e).__name__}: {_first_line(str(e))} (traceback: {log})", status="FAIL")

    # ----------------------------------------------------------------------------- commands

    def env(self) -> dict[str, str]:
        env = {**os.environ, "DEEPCLUSTER_PROGRESS": "0", "MPLBACKEND": "Agg",
               "DEEPCLUSTER_CACHE": str(self.work / "cache")}
        if self.smoke:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU's, even on a GPU machine
        return env

    def command(self, name: str, argv: list[str]) -> Outcome:
        """Run ``argv`` in its own process group, stopped at the hard limit; output to --out/logs."""
        with self._lock:
            self.steps += 1
            stem = self.out / "logs" / f"{self.steps:02d}_{_slug(name)}"
        (stem.parent / (stem.name + ".cmd")).write_text(" ".join(argv) + "\n")
        timeout = max(5.0, HARD_LIMIT_S - self.elapsed())
        t = time.perf_counter()
        with open(f"{stem}.out", "wb") as fo, open(f"{stem}.err", "wb") as fe:
            proc = subprocess.Popen(argv, cwd=ROOT, env=self.env(), stdout=fo, stderr=fe, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this check started (torchrun's workers too)
                proc.wait()
                code = 124
        seconds = time.perf_counter() - t
        last = _last_line(Path(f"{stem}.err")) or _last_line(Path(f"{stem}.out"))
        if code == 124:
            last = f"stopped after {timeout:.0f} s (the check's 8-minute limit)"
        return Outcome(code, seconds, last)

    def cli(self, section: str, name: str, args: list[str], *, torchrun: int = 0,
            detail: Callable[[], str] | None = None) -> Outcome | None:
        """One ``python -m deepcluster ARGS`` step (under torchrun with that many ranks) and its row
        (its time is checked by :meth:`guarded` when it runs as a task)."""
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                    str(torchrun)] if torchrun else [sys.executable]
        res = self.command(name, [*launcher, "-m", "deepcluster", *[str(a) for a in args]])
        if res.code:
            self.add(section, name, f"exit {res.code}: {res.last_line}", res.seconds, "FAIL", res.code)
            return res
        extra = ""
        if detail is not None:
            try:
                extra = "; " + detail()
            except Exception as e:  # noqa: BLE001 - a missing output file is reported, not raised
                self.add(section, name, f"exit 0 but {type(e).__name__}: {_first_line(str(e))}", res.seconds, "FAIL", 0)
                return res
        self.add(section, name, f"exit 0{extra}", res.seconds, "ok", 0)
        return res


# --------------------------------------------------------------------------------- helpers


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _phases(record: dict) -> str:
    secs = record.get("seconds", {})
    return " / ".join(f"{k} {v:.2f}" for k, v in secs.items()) + f" s (cycle {sum(secs.values()):.2f} s)"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _faiss_gpu() -> bool:
    """Whether faiss has GPU support and sees a GPU (then kmeans(device=cuda) fits with faiss-gpu)."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return bool(get is not None and get() > 0 and hasattr(faiss, "GpuIndexFlatL2"))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------- environment


def environment(chk: Check) -> None:
    import faiss
    import torch
    import torchvision

    import deepcluster
    from deepcluster.core.precision import resolve_precision

    s = "environment"
    chk.add(s, "python", f"{platform.python_version()} ({sys.executable})", status="ok")
    chk.add(s, "torch / torchvision", f"{torch.__version__} / {torchvision.__version__}; deepcluster {deepcluster.__version__}")
    cuda = torch.version.cuda or "none (CPU build)"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    chk.add(s, "CUDA / cuDNN", f"{cuda} / {cudnn or 'n/a'}")
    faiss_gpu = _faiss_gpu()
    chk.add(s, "faiss", f"{faiss.__version__}, GPU support: {'yes' if faiss_gpu else 'no'}"
            + ("" if faiss_gpu else " (k-means on a GPU runs the library's torch k-means)"))
    if chk.sizes.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        chk.add(s, "GPU", f"{props.name}, {_gib(props.total_memory)}, compute capability {props.major}.{props.minor}, "
                f"{torch.cuda.device_count()} visible")
    else:
        chk.add(s, "GPU", "none: --cpu-smoke runs on the CPU", status="n/a")
    before = _tf32()
    prec = resolve_precision("auto", chk.sizes.device)
    chk.add(s, "precision (auto)", f"{prec.label} on {chk.sizes.device}")
    after_auto = _tf32()
    resolve_precision("fp32", chk.sizes.device)  # what an fp32 run sets (TF32 off)
    chk.add(s, "TF32", f"at start: {before}; after resolving auto: {after_auto}; after resolving fp32: {_tf32()}")


def _tf32() -> str:
    """TF32 switches, legacy (allow_tf32) and new (fp32_precision) API; PyTorch refuses to read a
    legacy flag after the new API set conv and RNN differently, which is reported as such."""
    import torch

    def read(get: Callable[[], object]) -> str:
        try:
            return str(get())
        except (RuntimeError, AttributeError) as e:
            return f"unreadable ({type(e).__name__})"

    b = torch.backends
    return (f"matmul.allow_tf32={read(lambda: b.cuda.matmul.allow_tf32)}, "
            f"cudnn.allow_tf32={read(lambda: b.cudnn.allow_tf32)}, "
            f"matmul.fp32_precision={read(lambda: b.cuda.matmul.fp32_precision)}, "
            f"cudnn.conv.fp32_precision={read(lambda: b.cudnn.conv.fp32_precision)}")


# --------------------------------------------------------------------------------- k-means


def _blobs(n: int, d: int, centres: int, seed: int) -> np.ndarray:
    """``n`` rows around ``centres`` random centres (clusters a k-means should find)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def _sq_loss(x: np.ndarray, centroids: np.ndarray, assign: np.ndarray) -> float:
    total = 0.0
    for start in range(0, len(x), 1 << 16):
        diff = x[start:start + (1 << 16)].astype(np.float64) - centroids[assign[start:start + (1 << 16)]].astype(np.float64)
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def _torch_kmeans(x: np.ndarray, k: int, niter: int, device: str) -> tuple[np.ndarray, float, float]:
    """The library's torch k-means (fit + nearest-centroid assignment) on ``device``: assignments,
    loss, seconds."""
    import torch

    from deepcluster.cluster.torch_kmeans import nearest_centroids, torch_kmeans

    _sync(device)
    t = time.perf_counter()
    centroids, _ = torch_kmeans(x, k, niter=niter, seed=0, device=device)
    assign = nearest_centroids(torch.from_numpy(x).to(device), torch.from_numpy(centroids).to(device)).cpu().numpy()
    seconds = time.perf_counter() - t
    return assign, _sq_loss(x, centroids, assign), seconds


def kmeans_section(chk: Check) -> None:
    s, z = "k-means", chk.sizes
    dev = z.device

    def moderate() -> None:
        import torch

        from deepcluster.cluster import kmeans, nmi

        x = _blobs(z.km_n, z.km_d, z.km_k, seed=0)
        if dev.startswith("cuda"):
            torch.zeros(1, device=dev)  # CUDA start-up outside the timings
            _torch_kmeans(x[: 4 * z.km_k], z.km_k, 1, dev)  # warm-up (cuBLAS handles, kernels)
        assign_t, loss_t, sec_t = _torch_kmeans(x, z.km_k, z.km_iters, dev)
        t = time.perf_counter()
        ref = kmeans(x, z.km_k, niter=z.km_iters, seed=0, use_gpu=False)
        sec_f = time.perf_counter() - t
        agree = nmi(ref.assignments, assign_t)
        ratio = loss_t / ref.loss
        ok = agree >= 0.95 and abs(ratio - 1) <= 0.01
        chk.add(s, f"torch ({dev}) vs CPU kmeans, {z.km_n:,}x{z.km_d}, k={z.km_k:,}, {z.km_iters} iters",
                f"NMI {agree:.4f}, loss ratio torch/CPU {ratio:.5f}; torch {sec_t:.2f} s, CPU kmeans {sec_f:.2f} s "
                f"(x{sec_f / max(sec_t, 1e-9):.1f})", sec_t + sec_f, "ok" if ok else "FAIL")
        if not dev.startswith("cuda"):
            chk.add(s, "kmeans(device=cuda) as training calls it", "no GPU in --cpu-smoke", status="n/a")
            return
        backend = "faiss-gpu" if _faiss_gpu() else "torch k-means"
        t = time.perf_counter()
        res = kmeans(x, z.km_k, niter=z.km_iters, seed=0, device=dev)
        sec = time.perf_counter() - t
        agree, ratio = nmi(ref.assignments, res.assignments), res.loss / ref.loss
        ok = agree >= 0.95 and abs(ratio - 1) <= 0.01
        chk.add(s, f"kmeans(device={dev}) as training calls it ({backend})",
                f"NMI vs CPU kmeans {agree:.4f}, loss ratio {ratio:.5f}, {res.n_resplit} re-splits", sec,
                "ok" if ok else "FAIL")

    def large() -> None:
        import torch

        from deepcluster.cluster.torch_kmeans import torch_kmeans

        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(z.big_n, z.big_d, device=dev, generator=g).cpu().numpy()
        label = f"torch ({dev}) large: {z.big_n:,}x{z.big_d}, k={z.big_k:,}"
        times = {}
        peak = None
        for niter in (1, 3):
            if not chk.has_time(s, f"{label}, {niter} iteration(s)"):
                return
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            _sync(dev)
            t = time.perf_counter()
            torch_kmeans(x, z.big_k, niter=niter, seed=0, device=dev)
            _sync(dev)
            times[niter] = time.perf_counter() - t
            if dev.startswith("cuda"):
                peak = torch.cuda.max_memory_allocated()
        per_iter = (times[3] - times[1]) / 2
        chk.add(s, label, f"{per_iter:.3f} s/iteration ((3 iters {times[3]:.2f} s - 1 iter {times[1]:.2f} s) / 2, "
                f"start-up and copies excluded); peak GPU memory {_gib(peak) if peak is not None else 'n/a (cpu)'}",
                times[1] + times[3])

    def large_dispatch() -> None:
        import torch

        from deepcluster.cluster import kmeans

        if not dev.startswith("cuda"):
            chk.add(s, "kmeans(device=cuda) large, 2 iterations", "no GPU in --cpu-smoke", status="n/a")
            return
        x = torch.randn(z.big_n, z.big_d, device=dev, generator=torch.Generator(device=dev).manual_seed(1)).cpu().numpy()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        res = kmeans(x, z.big_k, niter=2, seed=0, device=dev)
        sec = time.perf_counter() - t
        chk.add(s, f"kmeans(device={dev}) large, 2 iterations (fit, assign, re-split, loss)",
                f"{sec:.2f} s in all, {res.n_resplit} re-splits, peak GPU memory {_gib(torch.cuda.max_memory_allocated())}",
                sec)

    chk.guarded(s, "moderate", moderate)
    chk.guarded(s, "large", large)
    chk.guarded(s, "large, kmeans(device)", large_dispatch)


# --------------------------------------------------------------------------------- digits CLI


def digits_section(chk: Check) -> Task:
    """Schedules the digits commands; returns the first train (one cycle, one process), which the
    distributed section compares with."""
    s, z, w = "digits CLI", chk.sizes, chk.work
    run = w / "digits"
    sets = [a for o in z.digits for a in ("--set", o)]

    def trained() -> str:
        m = _metrics(run)
        return f"{len(m)} cycle(s), NMI(labels) {m[-1].get('nmi_labels', float('nan')):.3f}, {_phases(m[-1])}"

    def step(name: str, args: list, detail: Callable[[], str], *needs: Task) -> Task:
        return chk.task(s, name, lambda: chk.cli(s, name, args, detail=detail), *needs)

    train = step("train", ["train", "-c", DIGITS, "--set", "cycles=1", *sets, "-o", run, "-q"], trained)
    resume = step("resume", ["train", "--resume", run, "--set", "cycles=2", "-q"], trained, train)
    evaluate = step("evaluate", ["evaluate", run, "-q"],
                    lambda: f"{len(json.loads((run / 'eval' / 'evaluation.json').read_text())['rows'])} numbers",
                    resume)
    report_sets = [a for o in z.report for a in ("--set", o)]
    step("report", ["report", run, "--device", z.device, *report_sets, "-q"],
         lambda: f"report.html {(run / 'report' / 'report.html').stat().st_size / 1e6:.1f} MB", evaluate)
    ia_sets = [a for o in (f"device={z.device}", *z.ia) for a in ("--set", o)]
    step("ia", ["ia", "-c", DIGITS, "--seeds", z.ia_seeds, *ia_sets, "-o", w / "ia", "-q"],
         lambda: f"{z.ia_seeds} seeds, median IA {_ia_median(w / 'ia')}")
    step("export", ["export", run, "-o", w / "export", "-q"],
         lambda: f"features {np.load(w / 'export' / 'features.npy').shape}", resume)
    step("similarity", ["similarity", run, run, "--name", "a", "--name", "b", "--sample", 200,
                        "--device", z.device, "-o", w / "similarity", "-q"],
         lambda: f"{len((w / 'similarity' / 'cka.csv').read_text().splitlines()) - 1} CKA pairs", resume)

    def probe() -> None:
        from deepcluster.interpret.concepts import make_concept_probe

        t = time.perf_counter()
        make_concept_probe(w / "probe", n_images=z.probe_images, size=z.probe_size, show_progress=False)
        chk.add(s, "concept probe (for dissect)", f"{z.probe_images} images of {z.probe_size} px, written in-process",
                time.perf_counter() - t, "ok")

    made = chk.task(s, "concept probe (for dissect)", probe)
    threads = ["--threads", "1"] if chk.smoke else []
    step("dissect", ["dissect", run, "--layer", "conv2", "--concepts", w / "probe", "--device", z.device,
                     *threads, "-o", w / "dissect", "-q"],
         lambda: f"{json.loads((w / 'dissect' / 'summary.json').read_text())['n_units']} units", resume, made)
    return train


def _ia_median(folder: Path) -> str:
    import csv

    with open(folder / "samples.csv", newline="") as f:
        values = [float(r["ia"]) for r in csv.DictReader(f) if r.get("ia") not in (None, "")]
    return f"{float(np.median(values)):.3f} over {len(values)} samples" if values else "n/a"


# --------------------------------------------------------------------------------- AlexNet


def _write_jpegs(args: tuple[Path, int, int, int]) -> None:
    """Images ``start..stop`` of the folder: a smooth random colour field plus noise, as JPEG."""
    from PIL import Image

    folder, start, stop, px = args
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((px, px), Image.BICUBIC)
        img = np.asarray(coarse, dtype=np.int16) + rng.integers(-24, 25, (px, px, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"img_{i:05d}.jpg", quality=85)


class GpuUtil:
    """Samples ``nvidia-smi``'s GPU utilisation every half second in a background thread."""

    def __init__(self, enabled: bool) -> None:
        self.exe = shutil.which("nvidia-smi") if enabled else None
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run([self.exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(int(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass

    def __enter__(self) -> GpuUtil:
        if self.exe:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.exe:
            self._stop.set()
            self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "GPU util n/a" + ("" if self.exe else " (no nvidia-smi)")
        return (f"GPU util mean {sum(self.samples) / len(self.samples):.0f} %, max {max(self.samples)} % "
                f"({len(self.samples)} samples)")


def alexnet_section(chk: Check) -> None:
    s, z, w = "alexnet cycle", chk.sizes, chk.work
    folder = w / "jpegs"

    def write() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        workers = min(16, os.cpu_count() or 1) if z.alex_images > 256 else 1
        step = -(-z.alex_images // workers)
        parts = [(folder, a, min(a + step, z.alex_images), z.alex_px) for a in range(0, z.alex_images, step)]
        if workers > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                pool.map(_write_jpegs, parts)
        else:
            for p in parts:
                _write_jpegs(p)
        mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
        chk.add(s, "JPEG folder", f"{z.alex_images:,} images of {z.alex_px} px, {mb:.1f} MB", time.perf_counter() - t)

    jpegs = chk.task(s, "JPEG folder", write)
    base = ["train", "-c", ALEXNET, "--set", f"data.root={folder}", "--set", f"data.image_size={z.alex_px}",
            "--set", "cycles=1", "--set", f"device={z.device}", *[a for o in z.alex for a in ("--set", o)]]
    # data.memory_budget_mb=0 always streams (DataLoader workers decode the JPEGs every pass)
    for name, budget in (("streamed", 0), ("in memory", z.alex_in_memory_mb)):
        chk.task(s, name, functools.partial(_alexnet_run, chk, name, [*base, "--set", f"data.memory_budget_mb={budget}",
                                                                      "-o", w / f"alexnet_{_slug(name)}", "-q"]), jpegs)


def _alexnet_run(chk: Check, name: str, args: list) -> None:
    s, z = "alexnet cycle", chk.sizes
    if not (chk.work / "jpegs").is_dir():
        chk.add(s, name, "no JPEG folder (its step failed)", status="FAIL")
        return
    out = Path(args[-2])
    with GpuUtil(enabled=z.device.startswith("cuda")) as util:
        res = chk.cli(s, name, args)
    if res is None or res.code:
        return
    rec = _metrics(out)[0]
    secs = rec.get("seconds", {})
    rate = z.alex_images / secs["training"] if secs.get("training") else float("nan")
    chk.add(s, f"{name}: phases", f"{_phases(rec)}; training {rate:,.0f} images/s; {util.summary()}; "
            f"{rec.get('precision')}; images: {rec.get('images')}", sum(secs.values()))


# --------------------------------------------------------------------------------- distributed


def distributed_section(chk: Check, one_process: Task) -> None:
    s, z, w = "distributed", chk.sizes, chk.work
    one = w / "digits"  # the digits section's first train: one cycle, one process, same settings
    two = w / "digits_2ranks"
    train_sets = [o for o in z.digits if not o.startswith("eval.")]
    sets = [a for o in (*train_sets, "cycles=1", "distributed.backend=gloo") for a in ("--set", o)]
    name = "2 ranks (torchrun, gloo)"
    ranks = chk.task(s, name, lambda: chk.cli(s, name, ["train", "-c", DIGITS, *sets, "-o", two, "-q"], torchrun=2,
                                              detail=lambda: _phases(_metrics(two)[0])))

    def compare() -> None:
        from deepcluster.cluster import nmi

        for run, what in ((one, "the one-process digits train"), (two, "the 2-rank train")):
            if not (run / "assignments" / "cycle_001.npy").is_file():
                chk.add(s, "vs 1 process", f"nothing to compare: {what} wrote no cycle 1", status="FAIL")
                return
        a = np.load(one / "assignments" / "cycle_001.npy", allow_pickle=False)
        b = np.load(two / "assignments" / "cycle_001.npy", allow_pickle=False)
        same = a.shape == b.shape and bool((a == b).all())
        c1, c2 = (sum(_metrics(r)[0]["seconds"].values()) for r in (one, two))
        # identical is guaranteed on CPUs only (docs/configuration.md, "What is exact where"): on a
        # GPU the two runs' float reductions differ, so near-identical clusters pass there
        close = a.shape == b.shape and nmi(a, b) >= 0.99
        chk.add(s, "vs 1 process (the digits train step)",
                f"cycle 1: 1 process {c1:.2f} s, 2 ranks {c2:.2f} s (x{c1 / max(c2, 1e-9):.2f}); assignments "
                + ("identical" if same else f"differ (NMI {nmi(a, b):.4f}, {int((a != b).sum())} of {len(a)} rows)"),
                status="ok" if same or (close and not chk.smoke) else "FAIL")

    chk.task(s, "vs 1 process", compare, ranks, one_process)


# --------------------------------------------------------------------------------- output


def table(rows: list[Row]) -> list[list[str]]:
    head = ["section", "check", "result", "s", "status"]
    body = [[r.section, r.check, r.value, "" if r.seconds is None else f"{r.seconds:.1f}", r.status] for r in rows]
    return [head, *body]


def plain(rows: list[Row]) -> str:
    cells = table(rows)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = [" | ".join(c.ljust(wd) for c, wd in zip(cells[0], widths, strict=True)),
             "-+-".join("-" * wd for wd in widths)]
    lines += [" | ".join(c.ljust(wd) for c, wd in zip(row, widths, strict=True)) for row in cells[1:]]
    return "\n".join(line.rstrip() for line in lines)


def markdown(rows: list[Row], header: str) -> str:
    cells = table(rows)
    esc = [[c.replace("|", "\\|") for c in row] for row in cells]
    lines = [header, "", "| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(esc[0])]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="everything tiny, on the CPU (keeps the script working)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check", help="where the table and logs go")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip the remaining steps past this many seconds")
    p.add_argument("--jobs", type=int, default=0,
                   help="commands run at once (default 1 on the GPU, so timings are clean; 2 with --cpu-smoke)")
    p.add_argument("--keep", action="store_true", help="keep the run folders (OUT/work) instead of a temporary folder")
    args = p.parse_args(argv)

    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device is visible to torch {torch.__version__} here; run it on a GPU machine "
              "(or `python benchmarks/gpu_check.py --cpu-smoke` for the tiny CPU run)", file=sys.stderr)
        return 2
    sizes = SMOKE if args.cpu_smoke else GPU
    out = args.out.resolve()
    shutil.rmtree(out / "logs", ignore_errors=True)  # this check's logs only
    (out / "logs").mkdir(parents=True)
    if args.keep:
        work = out / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    jobs = args.jobs or (2 if args.cpu_smoke else 1)
    chk = Check(args.cpu_smoke, sizes, out, work, args.budget_s, jobs)
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    print(f"gpu_check ({mode}): runs in {work}, logs in {out / 'logs'}", flush=True)
    try:
        # in-process first (the GPU to themselves), then the commands, `jobs` at a time
        for key, (name, section) in enumerate((("environment", environment), ("k-means", kmeans_section))):
            chk._local.key = key
            chk.guarded(name, "section", lambda section=section: section(chk))
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # the commands get the GPU's memory back
        one_process = digits_section(chk)
        alexnet_section(chk)
        distributed_section(chk, one_process)
        chk.run_tasks()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = chk.elapsed()
    chk.rows.sort(key=lambda r: r.order)
    failed = [r for r in chk.rows if r.status == "FAIL"]
    skipped = [r for r in chk.rows if r.status.startswith("skipped")]
    verdict = ("PASS" if not failed and not skipped
               else f"{len(failed)} failed, {len(skipped)} skipped for time")
    header = (f"# GPU acceptance check ({mode})\n\n{time.strftime('%Y-%m-%d %H:%M:%S')}, "
              f"{platform.node()}, {total:.0f} s in all, {jobs} command(s) at a time"
              + (" (their seconds overlap)" if jobs > 1 else "") + f": **{verdict}**")
    (out / "gpu_check.json").write_text(json.dumps(
        {"mode": mode, "verdict": verdict, "jobs": jobs, "ok": not failed and not skipped, "total_seconds": round(total, 1),
         "sections": list(SECTIONS), "rows": [asdict(r) for r in chk.rows]}, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(chk.rows, header))
    print("\n" + plain(chk.rows))
    print(f"\ngpu_check ({mode}): {verdict} in {total:.0f} s; table in {out / 'gpu_check.md'} and gpu_check.json")
    return 0 if not failed and not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
