"""The run environment: what a command sets up once from a run's config before it computes.

Every command that runs a network (``train``, ``evaluate``, ``ia``, studies, ensembles) starts the
same way: the thread count, this process's device (its own GPU under torchrun), the precision of
the forward passes, where the images are read from (in memory or streamed), and their
normalisation. :class:`RunEnv` does it once; the rest of the command asks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepcluster.core.config import TrainConfig
from deepcluster.core.device import rank_device
from deepcluster.core.precision import Precision, run_precision, set_deterministic
from deepcluster.data.base import ImageDataset
from deepcluster.data.source import ImageSource, source_for
from deepcluster.data.splits import normalization
from deepcluster.features import FeatureOptions

__all__ = ["RunEnv"]


@dataclass(frozen=True)
class RunEnv:
    """A run's compute environment. Build it with :meth:`from_config`.

    Attributes
    ----------
    cfg : TrainConfig
        The run's config.
    device : torch.device
        This process's device (``cuda:LOCAL_RANK`` under torchrun on GPUs).
    precision : Precision
        Arithmetic of the forward passes (``precision`` resolved for the device).
    show_progress : bool
        Progress bars (rank 0 only shows them under torchrun: the caller decides).
    """

    cfg: TrainConfig
    device: torch.device
    precision: Precision
    show_progress: bool = True

    @classmethod
    def from_config(cls, cfg: TrainConfig, *, show_progress: bool = True) -> RunEnv:
        """Set the thread count (``threads``) and ``deterministic``, resolve the device for this rank
        and the precision (fp32 turns TF32 off)."""
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        set_deterministic(cfg.deterministic)
        device = rank_device(cfg.device)
        return cls(cfg=cfg, device=device, precision=run_precision(cfg, device), show_progress=show_progress)

    def source(self, dataset: ImageDataset) -> ImageSource:
        """Where ``dataset`` is read from: in memory within ``data.memory_budget_mb``, else streamed
        (a JPEG folder decoded on this GPU, ``data.decode``)."""
        return source_for(self.cfg, dataset, device=self.device)

    def features(self, channels: int, *, show_progress: bool | None = None) -> FeatureOptions:
        """How the run's networks read images of ``channels`` channels: the run's normalisation,
        this device and precision, ``feature_batch_size``."""
        mean, std = normalization(self.cfg, channels)
        return FeatureOptions(mean=mean, std=std, device=self.device, precision=self.precision,
                              batch_size=self.cfg.feature_batch_size,
                              show_progress=self.show_progress if show_progress is None else show_progress)
