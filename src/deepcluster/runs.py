"""A self-describing run folder, from which every offline tool rebuilds the model.

    runs/NAME/
      config.yaml              the full TrainConfig (+ package version)
      checkpoint.pt            latest finished cycle: model, optimiser, cycle, assignments
      checkpoints/init.pt      the network at its random initialisation
      checkpoints/cycle_NNN.pt kept every ``checkpoint_every`` cycles
      assignments/cycle_NNN.npy
      metrics.jsonl            one record per finished cycle
      tensorboard/             the same curves for TensorBoard
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from deepcluster.config import TrainConfig, build_config, config_to_dict
from deepcluster.errors import TrainingError
from deepcluster.io import read_jsonl, write_text
from deepcluster.models import DeepClusterNet, build_model

__all__ = ["RunFolder", "build_network"]


@dataclass
class RunFolder:
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # paths -----------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def init_path(self) -> Path:
        return self.path / "checkpoints" / "init.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    def cycle_checkpoint_path(self, cycle: int) -> Path:
        return self.path / "checkpoints" / f"cycle_{cycle:03d}.pt"

    def assignments_path(self, cycle: int) -> Path:
        return self.path / "assignments" / f"cycle_{cycle:03d}.npy"

    # reading ---------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> RunFolder:
        if not self.path.is_dir():
            raise TrainingError(f"run folder {self.path} does not exist: pass the --out folder of a `deepcluster train` run")
        if not self.config_path.is_file():
            raise TrainingError(f"{self.path} has no config.yaml, so it is not a deepcluster run folder: pass the --out folder of a `deepcluster train` run")
        return self

    def load_config(self) -> TrainConfig:
        return build_config(TrainConfig, self.require().config_path)

    def save_config(self, cfg: TrainConfig) -> None:
        write_text(self.config_path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def assignment_cycles(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / "assignments").glob("cycle_*.npy"))

    def load_assignments(self, cycle: int | None = None) -> np.ndarray:
        cycles = self.assignment_cycles()
        if not cycles:
            raise TrainingError(f"{self.path} has no saved assignments yet: train at least one cycle")
        cycle = cycles[-1] if cycle is None else cycle
        path = self.assignments_path(cycle)
        if not path.is_file():
            raise TrainingError(f"{path} not found: available cycles are {cycles}")
        return np.load(path)

    def load_checkpoint(self, which: str = "last") -> dict[str, Any]:
        """``which``: ``last``, ``init`` or a cycle number."""
        if which == "last":
            path = self.checkpoint_path
        elif which == "init":
            path = self.init_path
        else:
            path = self.cycle_checkpoint_path(int(which))
        if not path.is_file():
            raise TrainingError(f"checkpoint {path} not found: train the run first (or resume it)")
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise TrainingError(f"checkpoint {path} is unreadable ({e.__class__.__name__}): delete it and resume from the previous one") from None

    def build_model(self, which: str = "last", cfg: TrainConfig | None = None) -> DeepClusterNet:
        """Rebuild the network from the folder alone, with the weights of ``which``."""
        cfg = cfg or self.load_config()
        ckpt = self.load_checkpoint(which)
        model = build_network(cfg, ckpt["in_channels"], ckpt["input_size"])
        model.load_state_dict(ckpt["model"], strict=True)
        model.eval()
        return model


def build_network(cfg: TrainConfig, in_channels: int, input_size: int, seed: int | None = None) -> DeepClusterNet:
    """The run's architecture, without its top layer (that depends on the cycle's clusters)."""
    return build_model(
        cfg.model.arch, in_channels=in_channels, input_size=input_size, sobel=cfg.model.sobel,
        num_classes=None, seed=cfg.network_seed if seed is None else seed,
    )
