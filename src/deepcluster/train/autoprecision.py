"""``precision: auto`` per phase: the feature pass and the training step each run in what is measured
faster on the hardware at hand.

bf16 is not faster everywhere: the matrix units shorten large convolutions and matrix products, but
a LeNet training step on 128 small images is bound by memory traffic and per-operator overhead, and
casting to bf16 there can cost more than it saves (docs/performance.md). So with ``precision: auto``
on hardware that computes bf16 natively, a run times both precisions on its own network and images
before its first cycle -- a few feature batches and a few training steps each, interleaved, on a
copy of the network -- and takes bf16 for a phase only where it is at least :data:`MARGIN` times
faster (fp32 is exact: ties go to it).

The choice is kept in the run folder (``precision.json``; a resumed run computes as it did) and in a
per-machine cache (``$DEEPCLUSTER_CACHE_DIR``, else ``~/.cache/deepcluster``), keyed by the
hardware, the torch version, the network and the batch shapes, so that the same config on the same
machine computes the same way run after run. ``precision: fp32`` or ``bf16`` is used as written,
for both phases, with nothing measured.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from deepcluster.core import distributed
from deepcluster.core.config import TrainConfig
from deepcluster.core.errors import ConfigError, TrainingError
from deepcluster.core.files import write_json
from deepcluster.core.precision import Precision, cpu_name, resolve_precision, run_precision
from deepcluster.data.source import ImageSource
from deepcluster.features import FeatureOptions
from deepcluster.models import DeepClusterNet

__all__ = ["MARGIN", "PhasePrecision", "cache_dir", "choose_precisions", "load_precisions", "save_precisions"]

#: bf16 is taken for a phase only when measured at least this many times faster than fp32.
MARGIN = 1.1

PHASES = ("features", "training")


@dataclass(frozen=True)
class PhasePrecision:
    """The precision of each phase of a run, and how it was decided.

    ``how`` is ``config`` (``precision`` fp32 or bf16, or auto without native bf16), ``measured``,
    ``cached`` (measured earlier on this machine) or ``run folder`` (a resumed run).
    ``ms`` holds the measured milliseconds per batch: ``{phase: {"fp32": ..., "bf16": ...}}``.
    """

    features: Precision
    training: Precision
    how: str = "config"
    ms: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"features": self.features.label, "training": self.training.label, "how": self.how,
                "ms": self.ms, "margin": MARGIN}

    @classmethod
    def from_json(cls, data: dict[str, Any], device: torch.device, how: str) -> PhasePrecision:
        return cls(features=_from_label(data["features"], device), training=_from_label(data["training"], device),
                   how=how, ms=data.get("ms", {}))

    @property
    def label(self) -> str:
        """``bf16+channels_last`` when both phases agree, else ``features bf16+channels_last, training fp32``."""
        if self.features.name == self.training.name:
            return self.features.label
        return f"features {self.features.label}, training {self.training.label}"


def _from_label(label: str, device: torch.device) -> Precision:
    name, _, layout = label.partition("+")
    return resolve_precision(name, device, channels_last=layout == "channels_last")


def cache_dir() -> Path:
    """Where measured choices are kept: ``$DEEPCLUSTER_CACHE_DIR``, else ``$XDG_CACHE_HOME/deepcluster``."""
    if os.environ.get("DEEPCLUSTER_CACHE_DIR"):
        return Path(os.environ["DEEPCLUSTER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deepcluster"


def _hardware(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def _cache_key(cfg: TrainConfig, model: DeepClusterNet, source: ImageSource, device: torch.device) -> str:
    parts = [_hardware(device), device.type, torch.__version__, str(torch.get_num_threads()), cfg.model.arch,
             str(cfg.model.sobel), str(source.channels), str(source.size), str(cfg.batch_size),
             str(cfg.feature_batch_size), str(sum(p.numel() for p in model.parameters()))]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def choose_precisions(cfg: TrainConfig, model: DeepClusterNet, source: ImageSource, reader: FeatureOptions,
                      *, cache: bool = True) -> PhasePrecision:
    """The precision of the feature pass and of training for this run (see the module's docstring).

    Every process of a distributed run uses rank 0's choice.
    """
    device = reader.device
    base = run_precision(cfg, device)
    if cfg.precision != "auto" or not base.bf16:
        return PhasePrecision(base, base)
    world = distributed.world()
    choice = None
    if world.is_main:
        key = _cache_key(cfg, model, source, device)
        path = cache_dir() / "precision.json"
        table = _read(path) if cache else {}
        if key in table:
            choice = PhasePrecision.from_json(table[key], device, "cached")
        else:
            choice = _measure(cfg, model, source, reader, base)
            if cache:
                table[key] = choice.to_json() | {"hardware": _hardware(device), "arch": cfg.model.arch,
                                                 "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
                try:
                    write_json(path, table)
                except OSError:  # a read-only home: the run still has its choice
                    pass
    if world.distributed:
        data = distributed.broadcast_object(choice.to_json() if choice is not None else None)  # keeps "how"
        choice = PhasePrecision.from_json(data, device, data["how"])
    return choice


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(cfg: TrainConfig, model: DeepClusterNet, source: ImageSource, reader: FeatureOptions,
             bf16: Precision) -> PhasePrecision:
    """Time fp32 and bf16 on a copy of ``model``, interleaved, and keep each phase's faster one."""
    device = reader.device
    net = copy.deepcopy(model)
    n = min(len(source), max(cfg.feature_batch_size, cfg.batch_size))
    images = reader.prepare(source.take(range(n)))
    fp32 = resolve_precision("fp32", device, channels_last=False)
    candidates = {"fp32": fp32, "bf16": bf16}
    feats = images[: cfg.feature_batch_size]
    batch = images[: cfg.batch_size]
    if len(batch) < 2:  # BatchNorm cannot train on one image: nothing to measure
        return PhasePrecision(bf16, bf16, "measured")
    net.reset_top_layer(min(cfg.k, 1000), generator=torch.Generator().manual_seed(0))
    net.to(device)
    targets = torch.arange(len(batch), device=device) % net.top_layer.out_features
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)

    def feature_pass(p: Precision) -> None:
        net.eval()
        with torch.no_grad(), p.inference(net):
            net.embed(p.input(feats))

    def training_step(p: Precision) -> None:
        net.train()
        with p.autocast():
            loss = F.cross_entropy(net(batch), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ms: dict[str, dict[str, float]] = {}
    for phase, step in (("features", feature_pass), ("training", training_step)):
        t = time.perf_counter()
        step(fp32)  # warm-up (and an estimate of the cost)
        _sync(device)
        reps = 5 if time.perf_counter() - t < 0.05 else 2
        for p in candidates.values():
            step(p)
        best = {name: float("inf") for name in candidates}
        for _ in range(3):
            for name, p in candidates.items():
                _sync(device)
                t = time.perf_counter()
                for _ in range(reps):
                    step(p)
                _sync(device)
                best[name] = min(best[name], (time.perf_counter() - t) / reps * 1000)
        ms[phase] = {name: round(v, 3) for name, v in best.items()}
    chosen = {phase: bf16 if ms[phase]["fp32"] >= MARGIN * ms[phase]["bf16"] else fp32 for phase in PHASES}
    return PhasePrecision(chosen["features"], chosen["training"], "measured", ms)


def save_precisions(choice: PhasePrecision, folder: Path) -> None:
    """Write ``precision.json`` into a run folder."""
    write_json(folder / "precision.json", choice.to_json())


def load_precisions(folder: Path, device: torch.device) -> PhasePrecision | None:
    """The choice a run folder keeps (None: none kept, e.g. a run from before 0.4)."""
    path = folder / "precision.json"
    if not path.exists():
        return None
    try:
        return PhasePrecision.from_json(json.loads(path.read_text()), device, "run folder")
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
        raise TrainingError(f"{path} is unreadable ({type(e).__name__}): it says which precision each phase of "
                            "the run used; restore it, or delete it to resume in the config's precision") from None
