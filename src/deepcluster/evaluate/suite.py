"""The evaluation suite: linear probe, kNN and low-shot for runs × checkpoints × layers, cached.

:func:`evaluate_suite` returns tidy rows (one number per row). Every number is read from the run's
cache (:mod:`deepcluster.evaluate.cache`) when it is there; features are extracted only for the
(checkpoint, layer) pairs that miss something, once per checkpoint, and conv maps are pooled to
``pool_budget`` dimensions (:mod:`deepcluster.evaluate.pooling`). :func:`write_suite_outputs`
writes ``evaluation.json``, ``probe_table.csv``/``.md``, ``cycle_metrics.csv`` and one bar chart
per protocol.

Under torchrun every collective comes first: the ranks extract their shares of every missing
(run, checkpoint, layer group) and rank 0 gathers each into ``.npy`` files under
``RUN/eval/features-*``; then the other ranks return, and rank 0 alone runs the protocols on the
features memory-mapped back, deleting the files as it goes.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcluster.core import distributed
from deepcluster.core.config import EvalConfig, TrainConfig, apply_overrides
from deepcluster.core.errors import ConfigError, DiskFullError
from deepcluster.core.files import write_json
from deepcluster.data.source import ImageSource
from deepcluster.data.splits import EvalSplits, describe_test_split, eval_splits, has_test_split, holdout_identity
from deepcluster.environment import RunEnv
from deepcluster.evaluate.cache import EvalCache, file_fingerprint
from deepcluster.evaluate.cycles import cycle_metrics
from deepcluster.evaluate.plan import RunPlan, machine_speed, plan_message, protocol_seconds
from deepcluster.evaluate.plots import write_bar_charts
from deepcluster.evaluate.pooling import (
    extract_pooled_features,
    pixel_features,
    pooled_dim,
)
from deepcluster.evaluate.protocols import (
    PROTOCOLS,
    check_protocols,
    protocol_params,
    result_metrics,
    run_protocol,
)
from deepcluster.evaluate.tables import (
    write_cycle_csv,
    write_table_csv,
    write_table_markdown,
)
from deepcluster.features import FeatureOptions
from deepcluster.models import DeepClusterNet
from deepcluster.runs import RunFolder, build_network

Log = Callable[[str], None]

#: The raw-pixel baseline's pseudo checkpoint and layer name.
PIXELS = "pixels"

#: Features of one extraction pass (train + test, all its layers) stay under this many bytes;
#: more layers are split into several passes over the images.
FEATURE_MEMORY_BYTES = 4 * 2**30


@dataclass
class _Split:
    images: ImageSource  # in memory, or streamed when the split is larger than data.memory_budget_mb
    labels: np.ndarray


@dataclass
class _RunData:
    train: _Split  # the images the probes are fitted on
    test: _Split  # the images they are scored on: the test split, or a held-out part of the training images
    reader: FeatureOptions  # normalisation, device, precision, batch size of the feature passes
    splits: EvalSplits  # which images these are, in words (scored, fitted)


def run_names(runs: Sequence[str | Path]) -> list[str]:
    """Short unique display names of run folders: the folder name, with its parent when ambiguous."""
    paths = [Path(r) for r in runs]
    names = [p.name or str(p) for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(n) > 1 else n for p, n in zip(paths, names)]


def run_eval_config(cfg: TrainConfig, eval_cfg: EvalConfig | dict[str, Any] | None) -> EvalConfig:
    """The evaluation settings of one run: its own ``eval`` section, or ``eval_cfg``.

    An :class:`EvalConfig` replaces the run's; a dict of keys is merged into the run's own (what
    ``--set`` does on the command line); ``None`` keeps the run's.
    """
    if eval_cfg is None:
        return cfg.eval
    if isinstance(eval_cfg, EvalConfig):
        return eval_cfg
    return apply_overrides(EvalConfig, cfg.eval, eval_cfg, source="eval settings")


def data_identity(cfg: TrainConfig, ecfg: EvalConfig) -> dict[str, Any]:
    """What the evaluation data depend on (part of every cache key): without a test split, also the
    held-out part's size and seed (:func:`~deepcluster.data.splits.holdout_identity`)."""
    return {"dataset": cfg.data.name, "split": cfg.data.split, "train_limit": ecfg.train_limit or cfg.data.limit,
            "test_split": cfg.data.test_split, "test_limit": ecfg.test_limit, "image_size": cfg.data.image_size,
            "seed": cfg.seed, **holdout_identity(cfg, ecfg),
            **({"resize": cfg.data.resize} if cfg.data.resize is not None else {})}


def _load_data(env: RunEnv, ecfg: EvalConfig) -> _RunData:
    splits = eval_splits(env.cfg, ecfg)
    images = env.source(splits.train)
    return _RunData(_Split(images, np.asarray(splits.train.labels)),
                    _Split(env.source(splits.test), np.asarray(splits.test.labels)),
                    env.features(images.channels), splits)


def scored_description(cfg: TrainConfig, ecfg: EvalConfig, entry: dict[str, Any]) -> str:
    """Which images a cached number was scored on: recorded with it, or (entries written before
    that was recorded, which all scored a test split) the test split of ``entry['n_test']`` images."""
    if entry.get("scored"):
        return str(entry["scored"])
    if has_test_split(cfg) and entry.get("n_test") is not None:
        return describe_test_split(cfg, int(entry["n_test"]), ecfg.test_limit)
    return "unknown images (an old cache entry: recompute with --no-cache)"


def _load_model(run: RunFolder, cfg: TrainConfig, checkpoint: str) -> tuple[DeepClusterNet, int]:
    return run.build_model(checkpoint, cfg), int(run.load_checkpoint(checkpoint).get("cycle", 0))


def _probe_layers(run: RunFolder, cfg: TrainConfig, checkpoint: str) -> tuple[list[str], list[str]]:
    """The network's default probe layers, and every layer a probe may name (extras too)."""
    ckpt = run.load_checkpoint(checkpoint)
    net = build_network(cfg, ckpt["in_channels"], ckpt["input_size"])
    return list(net.probe_layers()), list(net.probe_layers(extra=True))


def checkpoint_label(checkpoint: str, *, imported: bool = False) -> str:
    """How a checkpoint is named in tables: ``random (init)`` (``imported (init)`` for a run started
    from a weights file, ``init: FILE``), ``trained (last)``, ``cycle 5``, ``raw pixels``."""
    return {"init": "imported (init)" if imported else "random (init)", "last": "trained (last)",
            PIXELS: "raw pixels"}.get(checkpoint, f"cycle {checkpoint}")


def _layer_groups(model: DeepClusterNet, layers: list[str], data: _RunData, budget: int) -> list[list[str]]:
    """Split ``layers`` into extraction passes whose features fit in :data:`FEATURE_MEMORY_BYTES`."""
    with torch.no_grad():
        probe = data.reader.prepare(data.train.images.take([0, 1]))
        shapes = {n: tuple(v.shape[1:]) for n, v in model.layer_outputs(probe, layers, flatten=False).items()}
    n_rows = len(data.train.images) + len(data.test.images)
    groups: list[list[str]] = [[]]
    used = 0
    for layer in layers:
        size = n_rows * pooled_dim(shapes[layer], budget) * 4
        if groups[-1] and used + size > FEATURE_MEMORY_BYTES:
            groups.append([])
            used = 0
        groups[-1].append(layer)
        used += size
    return groups


def _fmt_result(protocol: str, result: dict[str, Any]) -> str:
    metrics = result_metrics(protocol, result)
    if protocol == "linear" and "last_acc" in result:
        return (f"last {100 * result['last_acc']:.1f}%  best {100 * result['best_acc']:.1f}% "
                f"(epoch {result['best_epoch']})")
    return "  ".join(f"{m} {100 * v:.1f}%" + (f"±{100 * s:.1f}" if s is not None else "") for m, v, s in metrics)


def evaluate_suite(
    runs: Sequence[str | Path],
    checkpoints: Sequence[str] = ("init", "last"),
    layers: Sequence[str] | None = None,
    protocols: Sequence[str] = PROTOCOLS,
    *,
    eval_cfg: EvalConfig | dict[str, Any] | None = None,
    pixel_baseline: bool | None = None,
    use_cache: bool = True,
    show_progress: bool = True,
    log: Log | None = None,
) -> list[dict[str, Any]]:
    """Evaluate runs × checkpoints × layers × protocols; every number cached in ``RUN/eval/cache``.

    Probes are fitted on the training split and scored on the test split; a run without one
    (``folder``, ``ingested``, ``data.test_split: null``) is scored on a seeded held-out part of its
    training images (``eval.holdout``) and fitted on the rest
    (:func:`~deepcluster.data.splits.eval_splits`). Before computing, ``log`` receives what is left
    to compute, an estimate of its duration and the switches that shorten it
    (:mod:`deepcluster.evaluate.plan`).

    Parameters
    ----------
    runs : Sequence[str or Path]
        Run folders made by ``deepcluster train``.
    checkpoints : Sequence[str]
        ``init``, ``last`` or cycle numbers with a kept checkpoint.
    layers : Sequence[str] or None
        Probe layers; ``None``: the runs' ``eval.layers``, or every probe layer of the model.
    protocols : Sequence[str]
        Among ``linear``, ``knn``, ``lowshot``.
    eval_cfg : EvalConfig, dict or None
        Evaluation settings (see :func:`run_eval_config`); ``None`` uses each run's ``eval`` section.
    pixel_baseline : bool or None
        Also evaluate the raw pixels (checkpoint and layer ``pixels``); ``None``: ``eval.pixel_baseline``.
    use_cache : bool
        ``False`` recomputes every number (and refreshes the cache).
    show_progress : bool
        Progress bars for feature extraction and SGD probes.
    log : callable or None
        Receives one line per step (what is cached, what is computed, each result).

    Returns
    -------
    list[dict[str, Any]]
        Tidy rows with ``run`` (path), ``run_name``, ``checkpoint``, ``label`` (e.g. ``trained (last)``),
        ``cycle`` (of the checkpoint; ``None`` for pixels), ``layer``, ``dim``, ``protocol``,
        ``metric``, ``value`` (accuracies in [0, 1]; ``best_epoch`` an epoch number), ``std`` (low-shot
        spread over draws, else ``None``), ``source`` (``cache`` or ``computed``), ``seconds``
        (compute time of the protocol, as recorded when it was computed), ``scored`` (which images
        the number was measured on: ``"test split (10,000 images)"``, or without a test split
        ``"held-out 20 % of the training images (300 of 1,500, seed 0)"``), ``n_scored`` and
        ``n_fitted`` (images scored, and images the probe was fitted on).

    Raises
    ------
    ConfigError
        On an unknown protocol, layer or checkpoint name.
    DataError
        If a run's dataset has no labels, or (without a test split) ``eval.holdout`` leaves no image
        to fit the probes on.
    TrainingError
        If a run folder or a checkpoint is missing.
    """
    planned = log is not None  # the plan and its estimate are for someone who reads the log
    log = log or (lambda msg: None)
    protocols = check_protocols(list(protocols))
    checkpoints = list(dict.fromkeys(str(c).strip() for c in checkpoints))
    if not checkpoints:
        raise ConfigError("no checkpoint chosen: pass e.g. init,last")
    names = run_names(runs)
    folders = [RunFolder(Path(run_dir)).require() for run_dir in runs]
    for run in folders:  # every config and checkpoint is read (and checked) before any computation
        cfg = run.load_config()
        for checkpoint in checkpoints:
            run.build_model(checkpoint, cfg)
    # Every collective first (under torchrun: all runs' feature extraction and gathers), then the
    # other ranks are done and rank 0 runs the protocols left with no collective pending.
    done: list[_Run] = []
    try:
        for run, name in zip(folders, names):
            done.append(_evaluate_run(run, name, checkpoints, layers, protocols, eval_cfg, pixel_baseline, use_cache,
                                      show_progress, log, planned))
        if not distributed.world().is_main:
            return []
        return [row for r in done for row in r.finish()]
    finally:
        for r in done:
            r.remove()


def _needs_flipped(params: dict[tuple[str, str], dict[str, Any]], missing: list[tuple[str, str]]) -> bool:
    """Whether one of the ``missing`` (layer, protocol) numbers is an SGD probe with ``probe_hflip``."""
    return any(params[key].get("hflip") for key in missing)


@dataclass
class _Probes:
    """What running the protocols of one checkpoint's layers takes besides their features."""

    checkpoint: str
    missing: list[tuple[str, str]]  # (layer, protocol) to compute
    params: dict[tuple[str, str], dict[str, Any]]
    labels: tuple[np.ndarray, np.ndarray]  # of the training and test splits
    extra: dict[str, Any]  # cached with every number: n_train, n_test, cycle
    cache: EvalCache
    title: str
    device: torch.device
    show_progress: bool
    log: Log

    @property
    def hflip(self) -> bool:
        """Whether a probe to compute trains on flipped images too (their features are extracted)."""
        return _needs_flipped(self.params, self.missing)

    def run(self, layer: str, train: np.ndarray, test: np.ndarray, flipped: np.ndarray | None = None,
            ) -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
        """The protocols of ``layer`` on its features, each put in the cache as it is computed."""
        out: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        for key in [k for k in self.missing if k[0] == layer]:
            protocol = key[1]
            t0 = time.perf_counter()
            result = run_protocol(protocol, self.params[key], (train, self.labels[0]), (test, self.labels[1]),
                                  device=self.device, description=f"{self.title} {layer}: {protocol}",
                                  show_progress=self.show_progress, flipped=flipped)
            seconds = time.perf_counter() - t0
            self.cache.put(self.checkpoint, layer, protocol, self.params[key], result, seconds=seconds,
                           extra=self.extra)
            out[key] = ({"result": result, "seconds": round(seconds, 3), **self.extra}, "computed")
            self.log(f"  {self.title} {layer:8s} {protocol:8s} {_fmt_result(protocol, result)}  "
                     f"({result['dim']}-d, {seconds:.1f} s)")
        return out


@dataclass
class _Spilled:
    """One layer's gathered features, on disk until rank 0 runs its protocols."""

    probes: _Probes
    layer: str
    train: Path
    test: Path
    flipped: Path | None = None

    def run(self) -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
        """The layer's protocols on its features memory-mapped back; the files are deleted afterwards.

        ``mmap_mode="c"``: pages are read from the file as the protocols touch them, and the
        arrays are writable (copy on write, never written back) as PyTorch wants its inputs.
        """
        try:
            return self.probes.run(self.layer, np.load(self.train, mmap_mode="c"), np.load(self.test, mmap_mode="c"),
                                   None if self.flipped is None else np.load(self.flipped, mmap_mode="c"))
        finally:
            for path in (self.train, self.test, self.flipped):
                if path is not None:
                    path.unlink(missing_ok=True)


class _Spill:
    """Rank 0's folder of gathered features (``RUN/eval/features-*``, next to the cache), made on
    first use and removed by :meth:`remove`."""

    def __init__(self, parent: Path) -> None:
        self.parent, self.folder = parent, None
        self.count = 0

    def allocator(self, name: str) -> Callable[[tuple[int, ...], np.dtype], np.ndarray]:
        """``gather_rows``'s ``out``: a new ``.npy`` file, its blocks reserved, memory-mapped for writing."""
        def allocate(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
            if self.folder is None:
                self.parent.mkdir(parents=True, exist_ok=True)
                self.folder = Path(tempfile.mkdtemp(prefix="features-", dir=self.parent))
            self.count += 1
            path = self.folder / f"{self.count:04d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.npy"
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            _reserve(path)
            return array
        return allocate

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _reserve(path: Path) -> None:
    """Allocate the blocks of a memory-mapped file now: a full disk is a one-line error here, not
    a SIGBUS when the gathered rows are written into it."""
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - not Linux
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(path) from None
            # a file system without fallocate: the blocks are taken as the rows arrive


@dataclass
class _Checkpoint:
    """One checkpoint (or the raw pixels) of one run: its numbers, cached or computed, and under
    torchrun the layers whose protocols rank 0 runs once every collective is done."""

    checkpoint: str
    label: str
    layers: list[str]
    entries: dict[tuple[str, str], tuple[dict[str, Any], str]]
    spilled: list[_Spilled]


@dataclass
class _Run:
    run: RunFolder
    name: str
    protocols: list[str]
    checkpoints: list[_Checkpoint]
    spill: _Spill | None
    cfg: TrainConfig
    ecfg: EvalConfig

    def finish(self) -> list[dict[str, Any]]:
        """Rank 0: the protocols left (on the spilled features), then the tidy rows."""
        try:
            for ck in self.checkpoints:
                for spilled in ck.spilled:
                    ck.entries.update(spilled.run())
                ck.spilled = []
        finally:
            self.remove()
        rows: list[dict[str, Any]] = []
        for ck in self.checkpoints:
            for (layer, protocol), (entry, source) in sorted(
                    ck.entries.items(), key=lambda kv: (ck.layers.index(kv[0][0]), self.protocols.index(kv[0][1]))):
                result = entry["result"]
                scored = scored_description(self.cfg, self.ecfg, entry)
                for metric, value, std in result_metrics(protocol, result):
                    rows.append({"run": str(self.run.path), "run_name": self.name, "checkpoint": ck.checkpoint,
                                 "label": ck.label, "cycle": entry.get("cycle"), "layer": layer,
                                 "dim": result.get("dim"), "protocol": protocol, "metric": metric, "value": value,
                                 "std": std, "source": source, "seconds": entry.get("seconds"), "scored": scored,
                                 "n_scored": entry.get("n_test"), "n_fitted": entry.get("n_train")})
        return rows

    def remove(self) -> None:
        if self.spill is not None:
            self.spill.remove()


def _evaluate_run(run: RunFolder, name: str, checkpoints: list[str], layers: Sequence[str] | None,
                  protocols: list[str], eval_cfg: EvalConfig | dict[str, Any] | None, pixel_baseline: bool | None,
                  use_cache: bool, show_progress: bool, log: Log, planned: bool = True) -> _Run:
    """Every collective of one run: which numbers are missing, then their features.

    In one process the protocols run as each layer group's features arrive (nothing is spilled).
    Under torchrun rank 0 writes each gathered group to disk and runs the protocols in
    :meth:`_Run.finish`, after every rank is done with every collective.
    """
    cfg = run.load_config()
    ecfg = run_eval_config(cfg, eval_cfg)
    world = distributed.world()
    env = RunEnv.from_config(cfg, show_progress=show_progress and world.is_main)
    cache = EvalCache.for_run(run.path)
    files = {c: run.checkpoint_file(c) for c in checkpoints}
    if "init" in files and files.get("last") == files["init"]:  # no cycle finished (cycles: 0): one network
        checkpoints = [c for c in checkpoints if c != "last"]
        log(f"{name}: no cycle finished, so its last network is its initial one: evaluated once, as init")
    imported = (run.path / "init_weights.json").is_file()
    default, available = _probe_layers(run, cfg, checkpoints[0])
    wanted = list(layers) if layers is not None else (ecfg.layers or default)
    unknown = [lyr for lyr in wanted if lyr not in available]
    if unknown:
        raise ConfigError(f"unknown probe layer(s) {unknown} for arch {cfg.model.arch!r}; choose among {available}")
    data_id = data_identity(cfg, ecfg)

    jobs: list[tuple[str, list[str], dict[str, Any] | None]] = [
        (c, wanted, file_fingerprint(files[c])) for c in checkpoints]
    if ecfg.pixel_baseline if pixel_baseline is None else pixel_baseline:
        jobs.append((PIXELS, [PIXELS], None))

    # What the cache holds, for every checkpoint, before any work: the plan printed first says the rest.
    todo: list[tuple[str, str, list[str], dict, dict, list[tuple[str, str]]]] = []
    for checkpoint, ck_layers, fingerprint in jobs:
        params = {(lyr, p): {**protocol_params(p, ecfg, cfg.seed), "layer": lyr, "pool_budget": ecfg.pool_budget,
                             "data": data_id, "checkpoint": fingerprint,
                             **({} if checkpoint == PIXELS else {"precision": env.precision.label})}
                  for lyr in ck_layers for p in protocols}
        entries: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        if use_cache and world.is_main:  # rank 0 owns the cache and the outputs
            for key, prm in params.items():
                entry = cache.get(checkpoint, key[0], key[1], prm)
                if entry is not None:
                    entries[key] = (entry, "cache")
        missing = distributed.broadcast_object([key for key in params if key not in entries])
        todo.append((checkpoint, checkpoint_label(checkpoint, imported=imported), ck_layers, params, entries, missing))

    data: _RunData | None = None
    if any(t[-1] for t in todo):
        log(f"{name}: loading {cfg.data.name}")
        data = _load_data(env, ecfg)
        log(f"{name}: probes fitted on {data.splits.fitted}, scored on the {data.splits.scored}")
        if world.is_main and planned:
            for line in plan_message(_plan(run, cfg, ecfg, name, todo, data), ecfg):
                log(line)
    else:
        log(f"{name}: all {sum(len(t[4]) for t in todo)} numbers are in the cache")

    out = _Run(run, name, protocols, [], _Spill(cache.root.parent) if world.distributed else None, cfg, ecfg)
    try:
        for checkpoint, label, ck_layers, params, entries, missing in todo:
            spilled: list[_Spilled] = []
            if missing:
                assert data is not None
                log(f"{name} {label}: {len(missing)} to compute ({', '.join(dict.fromkeys(k[0] for k in missing))})"
                    + (f", {len(entries)} cached" if entries else ""))
                computed, spilled = _compute(run, cfg, ecfg, checkpoint, missing, params, data, cache,
                                             f"{name} {label}", log, out.spill)
                entries.update(computed)
            out.checkpoints.append(_Checkpoint(checkpoint, label, ck_layers, entries, spilled))
    except BaseException:
        out.remove()
        raise
    return out


def _plan(run: RunFolder, cfg: TrainConfig, ecfg: EvalConfig, name: str,
          todo: list[tuple[str, str, list[str], dict, dict, list[tuple[str, str]]]], data: _RunData) -> RunPlan:
    """What is left to compute for one run, with the estimated seconds of each part
    (:mod:`deepcluster.evaluate.plan`): the features timed on one batch, the protocols from their sizes."""
    speed = machine_speed()
    n_fit, n_scored = len(data.train.labels), len(data.test.labels)
    n_classes = int(max(data.train.labels.max(), data.test.labels.max())) + 1
    plan = RunPlan(name)
    dims: dict[str, int] = {}
    per_image: float | None = None
    for checkpoint, label, _, params, entries, missing in todo:
        plan.cached += len(entries)
        if not missing:
            continue
        plan.numbers += len(missing)
        layers = list(dict.fromkeys(layer for layer, _ in missing))
        if checkpoint == PIXELS:
            plan.pixels = True
        else:
            plan.checkpoints.append(label)
            plan.layers += [layer for layer in layers if layer not in plan.layers]
        for _, protocol in missing:
            if protocol not in plan.protocols:
                plan.protocols.append(protocol)
        if checkpoint == PIXELS:
            dims[PIXELS] = pixel_features(data.train.images.take([0]), ecfg.pool_budget).shape[1]
        else:
            model = run.build_model(checkpoint, cfg).to(data.reader.device)
            if per_image is None or any(layer not in dims for layer in layers):
                per_image, shapes = _time_forward(model, data, layers)
                dims.update({layer: pooled_dim(shape, ecfg.pool_budget) for layer, shape in shapes.items()})
            flips = _needs_flipped(params, missing)  # probe_hflip: one more pass over the fitted images
            plan.add("features", per_image * (n_fit * (2 if flips else 1) + n_scored))
        for layer, protocol in missing:
            plan.add(protocol, protocol_seconds(protocol, params[(layer, protocol)], n_fit, n_scored, dims[layer],
                                                n_classes, speed))
    plan.protocols = [p for p in PROTOCOLS if p in plan.protocols]
    return plan


def _time_forward(model: DeepClusterNet, data: _RunData, layers: list[str]) -> tuple[float, dict[str, tuple]]:
    """Seconds per image of a forward pass to ``layers`` and each layer's output shape: timed on 16
    images after a warm-up on 2, then, when that took under 0.2 s, on up to 256 (per-batch costs
    would make a small batch look slow)."""
    images, precision = data.train.images, data.reader.precision
    with torch.no_grad(), precision.inference(model):  # as the extraction will run it
        warm = precision.input(data.reader.prepare(images.take([0, min(1, len(images) - 1)])))
        shapes = {k: tuple(v.shape[1:]) for k, v in model.layer_outputs(warm, layers, flatten=False).items()}
        per_image = 0.0
        for n in (16, 256):
            n = min(n, len(images), data.reader.batch_size)
            batch = precision.input(data.reader.prepare(images.take(list(range(n)))))
            t0 = time.perf_counter()
            model.layer_outputs(batch, layers, flatten=False)
            seconds = time.perf_counter() - t0
            per_image = seconds / n
            if seconds > 0.2 or n == len(images):
                break
    return per_image, shapes


def _compute(run: RunFolder, cfg: TrainConfig, ecfg: EvalConfig, checkpoint: str, missing: list[tuple[str, str]],
             params: dict[tuple[str, str], dict[str, Any]], data: _RunData, cache: EvalCache, title: str,
             log: Log, spill: _Spill | None,
             ) -> tuple[dict[tuple[str, str], tuple[dict[str, Any], str]], list[_Spilled]]:
    """Extract the features of the layers in ``missing`` (in memory-bounded passes) and run their protocols.

    One process: each layer group's protocols run as soon as its features exist. Under torchrun
    every rank extracts the features of its share of the images and rank 0 gathers them into
    ``.npy`` files of ``spill``; it returns them, to run the protocols once every collective is
    done (the other ranks return nothing).
    """
    world = distributed.world()
    layers = list(dict.fromkeys(layer for layer, _ in missing))
    extra: dict[str, Any] = {"n_train": len(data.train.labels), "n_test": len(data.test.labels),
                             "scored": data.splits.scored, "fitted": data.splits.fitted}
    if checkpoint == PIXELS:
        model, groups = None, [layers]
        extra["cycle"] = None
    else:
        model, cycle = _load_model(run, cfg, checkpoint)
        model.to(data.reader.device)
        groups = _layer_groups(model, layers, data, ecfg.pool_budget)
        extra["cycle"] = cycle
    probes = _Probes(checkpoint, missing, params, (data.train.labels, data.test.labels), extra, cache, title,
                     data.reader.device, data.reader.show_progress, log)
    computed: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    spilled: list[_Spilled] = []
    sources = {"train": data.train.images, "test": data.test.images}
    if probes.hflip:  # the SGD probe's flip augmentation: features of the mirrored training images
        sources["flipped"] = data.train.images.flipped()
    for group in groups:
        features = {split: _sharded_features(model, images, data.reader, f"{title}: {split} features", group,
                                             ecfg.pool_budget, spill, f"{checkpoint}-{split}")
                    for split, images in sources.items()}
        if not world.is_main:
            continue
        for layer in group:
            ftr, fte = features["train"].pop(layer), features["test"].pop(layer)
            ffl = features["flipped"].pop(layer) if "flipped" in features else None
            if spill is None:
                computed.update(probes.run(layer, ftr, fte, ffl))
            else:
                for f in (ftr, fte, ffl):
                    if f is not None:
                        f.flush()
                spilled.append(_Spilled(probes, layer, Path(ftr.filename), Path(fte.filename),
                                        None if ffl is None else Path(ffl.filename)))
            del ftr, fte, ffl
    return computed, spilled


def _sharded_features(model: DeepClusterNet | None, images: ImageSource, reader: FeatureOptions, description: str,
                      layers: list[str], budget: int, spill: _Spill | None, name: str) -> dict[str, np.ndarray] | None:
    """Pooled features of every image (``model`` None: the raw pixels): this rank's share, gathered
    on rank 0 (into memory-mapped files of ``spill`` when given; ``None`` on the other ranks)."""
    share = distributed.shard(len(images))
    mine = images.view(share.start, share.stop)
    if model is None:
        feats = {PIXELS: pixel_features(mine, budget)}
    else:
        feats = extract_pooled_features(model, mine, reader, description=description, layers=layers, budget=budget)
    if not distributed.world().distributed:
        return feats
    gathered = {layer: distributed.gather_rows(feats.pop(layer),
                                               out=None if spill is None else spill.allocator(f"{name}-{layer}"))
                for layer in layers}  # the same order on every rank
    return gathered if distributed.world().is_main else None


def suite_cycle_metrics(runs: Sequence[str | Path]) -> dict[str, list[dict[str, Any]]]:
    """:func:`~deepcluster.evaluate.cycles.cycle_metrics` of each run, keyed by its display name."""
    return {name: cycle_metrics(r) for r, name in zip(runs, run_names(runs))}


def write_suite_outputs(
    rows: list[dict[str, Any]],
    out: str | Path,
    *,
    cycles: dict[str, list[dict[str, Any]]] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the suite's files into ``out``.

    Parameters
    ----------
    rows : list[dict]
        What :func:`evaluate_suite` returned.
    out : str or Path
        Output folder (created).
    cycles : dict or None
        Per-run cycle metrics (:func:`suite_cycle_metrics`); written to ``cycle_metrics.csv``.
    meta : dict or None
        Extra fields of ``evaluation.json`` (command, settings...).

    Returns
    -------
    dict[str, Path]
        What was written: ``json``, ``csv``, ``markdown``, ``cycles`` (when given) and
        ``chart_<protocol>`` for each protocol.
    """
    out = Path(out)
    paths: dict[str, Path] = {"json": out / "evaluation.json", "csv": out / "probe_table.csv",
                              "markdown": out / "probe_table.md"}
    write_table_csv(rows, paths["csv"])
    write_table_markdown(rows, paths["markdown"])
    if cycles:
        paths["cycles"] = write_cycle_csv(cycles, out / "cycle_metrics.csv")
    for protocol, path in write_bar_charts(rows, out).items():
        paths[f"chart_{protocol}"] = path
    write_json(paths["json"], {**(meta or {}), "rows": rows, "cycles": cycles or {},
                               "files": {k: p.name for k, p in paths.items() if k != "json"}})
    return paths


@dataclass
class SuiteOutput:
    """What :func:`evaluate_and_write` produced.

    Attributes
    ----------
    rows : list[dict]
        Tidy rows of :func:`evaluate_suite`.
    cycles : dict[str, list[dict]]
        Cycle metrics per run name.
    paths : dict[str, Path]
        Files written (see :func:`write_suite_outputs`).
    out : Path
        Output folder.
    seconds : float
        Wall time.
    """

    rows: list[dict[str, Any]]
    cycles: dict[str, list[dict[str, Any]]]
    paths: dict[str, Path]
    out: Path
    seconds: float

    def counts(self) -> dict[str, int]:
        """How many (run, checkpoint, layer, protocol) results came from the cache and were computed."""
        seen = {(r["run"], r["checkpoint"], r["layer"], r["protocol"]): r["source"] for r in self.rows}
        return {s: sum(v == s for v in seen.values()) for s in ("cache", "computed")}


def default_out(runs: Sequence[str | Path]) -> Path:
    """``RUN/eval`` for one run; several runs need an explicit folder (ConfigError)."""
    if len(runs) != 1:
        raise ConfigError(f"{len(runs)} runs compared: say where the tables go with --out DIR")
    return Path(runs[0]) / "eval"


def evaluate_and_write(
    runs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    checkpoints: Sequence[str] = ("init", "last"),
    layers: Sequence[str] | None = None,
    protocols: Sequence[str] = PROTOCOLS,
    eval_cfg: EvalConfig | dict[str, Any] | None = None,
    pixel_baseline: bool | None = None,
    use_cache: bool = True,
    show_progress: bool = True,
    log: Log | None = None,
) -> SuiteOutput:
    """:func:`evaluate_suite`, the runs' cycle metrics, and every output file, in one call.

    Parameters
    ----------
    runs : Sequence[str or Path]
        Run folders.
    out : str, Path or None
        Output folder; ``None``: ``RUN/eval`` for a single run (see :func:`default_out`).
    checkpoints, layers, protocols, eval_cfg, pixel_baseline, use_cache, show_progress, log
        See :func:`evaluate_suite`.

    Returns
    -------
    SuiteOutput
    """
    t0 = time.perf_counter()
    out_dir = Path(out) if out is not None else default_out(runs)
    rows = evaluate_suite(runs, checkpoints, layers, protocols, eval_cfg=eval_cfg, pixel_baseline=pixel_baseline,
                          use_cache=use_cache, show_progress=show_progress, log=log)
    if not distributed.world().is_main:  # under torchrun: rank 0 gathered the features and writes
        return SuiteOutput(rows=[], cycles={}, paths={}, out=out_dir, seconds=time.perf_counter() - t0)
    cycles = suite_cycle_metrics(runs)
    names = run_names(runs)
    settings = {}
    for r, name in zip(runs, names):
        cfg = RunFolder(Path(r)).load_config()
        ecfg = run_eval_config(cfg, eval_cfg)
        scored = list(dict.fromkeys(row["scored"] for row in rows if row["run_name"] == name))
        settings[name] = {"path": str(r), "eval": ecfg.model_dump(mode="json"), "data": data_identity(cfg, ecfg),
                          # which images the numbers were measured on: the test split, or a held-out part
                          # of the training images when the dataset has none (never the fitted images)
                          "scored": scored[0] if len(scored) == 1 else scored,
                          "held_out": not has_test_split(cfg)}
    seconds = time.perf_counter() - t0
    meta = {"runs": settings, "checkpoints": list(checkpoints), "layers": list(layers) if layers else None,
            "protocols": check_protocols(list(protocols)), "seconds": round(seconds, 2)}
    paths = write_suite_outputs(rows, out_dir, cycles=cycles, meta=meta)
    return SuiteOutput(rows=rows, cycles=cycles, paths=paths, out=out_dir, seconds=time.perf_counter() - t0)
