"""Which device a command computes on: the one validating resolver every command uses."""

from __future__ import annotations

import torch

from deepcluster.core import distributed
from deepcluster.core.errors import ConfigError

__all__ = ["rank_device", "resolve_device", "to_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu`` and ``cuda[:N]`` are checked.

    Parameters
    ----------
    device : str or torch.device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (a ``torch.device`` is returned as it is).

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        If the name is not a device, or names CUDA where there is none (or not that many GPUs).
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: no CUDA device is available here; use device cpu or auto")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu or cuda[:N]") from None
    if dev.type not in {"cpu", "cuda"}:
        raise ConfigError(f"unsupported device {name!r}: use auto, cpu or cuda[:N]")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0 or auto")
    return dev


def rank_device(device: str | torch.device = "auto") -> torch.device:
    """:func:`resolve_device`, then, under torchrun on CUDA, this process's own GPU
    (``cuda:LOCAL_RANK``, modulo the GPUs there are)."""
    dev = resolve_device(device)
    world = distributed.world()
    if world.distributed and dev.type == "cuda":
        dev = torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return dev


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``batch`` on ``device``; from pinned memory, without blocking, when that is a GPU."""
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)
