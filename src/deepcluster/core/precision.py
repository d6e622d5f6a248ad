"""The arithmetic of forward passes: fp32, or bf16 where the hardware has bf16 matrix units.

``precision`` (a config key, and an option of the commands that take no run folder) is ``fp32``,
``bf16`` or ``auto``: bf16 where the CPU has AMX or AVX-512 BF16 (Sapphire Rapids and later) or
the GPU computes bf16 natively, fp32 elsewhere. bf16 applies to forward passes only: training
runs its forward under ``torch.autocast`` with weights, gradients and optimiser state in fp32;
feature extraction returns fp32 features; PCA, k-means, probes and metrics stay fp32/fp64.

``channels_last`` (NHWC) is used for inference passes with bf16, where it was measured to help
(docs/performance.md: small AlexNet's feature pass 2.8× fp32 with both, 1.4× with bf16 alone);
training keeps NCHW, which measured faster for both LeNet-5 and small AlexNet. With fp32 the
layout stays NCHW unless asked (``channels_last: true``), so fp32 reproduces earlier numbers exactly.

fp32 means fp32 on GPUs too: resolving it turns TF32 off (:func:`exact_fp32`). ``deterministic``
(:func:`set_deterministic`) asks PyTorch for deterministic algorithms.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from deepcluster.core.errors import ConfigError

__all__ = ["FP32", "PRECISIONS", "Precision", "bf16_supported", "exact_fp32", "resolve_precision", "run_precision",
           "set_deterministic"]

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is ``fp32`` or ``bf16``; ``channels_last`` for inference passes."""

    name: str = "fp32"
    device_type: str = "cpu"
    channels_last: bool = False

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` in bf16 on this device, or nothing for fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch laid out for an inference pass (NHWC when ``channels_last``)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    @contextlib.contextmanager
    def layout(self, model: nn.Module) -> Iterator[None]:
        """``model``'s weights in NHWC while inside when ``channels_last`` (put back afterwards)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            if self.channels_last:
                model.to(memory_format=torch.contiguous_format)

    @contextlib.contextmanager
    def inference(self, model: nn.Module) -> Iterator[None]:
        """Run ``model`` for inference in this precision: autocast, and its weights in NHWC while
        inside (put back afterwards, so training is unaffected)."""
        with self.layout(model), self.autocast():
            yield

    @property
    def label(self) -> str:
        """``bf16``, ``bf16+channels_last``, ``fp32``..., as recorded in the run folder."""
        return self.name + ("+channels_last" if self.channels_last else "")


#: Plain fp32, NCHW: what every forward pass did before precision existed.
FP32 = Precision()


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _cpu_probe(name: str) -> bool | None:
    """torch's CPU capability probe ``name`` (``torch.cpu._is_..._supported``), or None where this
    build has none."""
    fn = getattr(getattr(torch, "cpu", None), name, None)
    if fn is None:
        return None
    try:
        return bool(fn())
    except RuntimeError:  # pragma: no cover - a build without the probe
        return None


@functools.cache
def cpu_has_amx() -> bool:
    """Whether the CPU has AMX tiles (bf16 products in blocks of 32 along K), not only AVX-512 BF16."""
    probed = _cpu_probe("_is_amx_tile_supported")
    return probed if probed is not None else "amx_tile" in _cpu_flags()


@functools.cache
def _cpu_bf16() -> bool:
    """AMX or AVX-512 BF16: bf16 matrix products faster than fp32 (not emulated)."""
    if any(_cpu_probe(name) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")):
        return True
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively (CPU: AMX / AVX-512 BF16; CUDA: compute capability 8+)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return _cpu_bf16()
    return False


def resolve_precision(name: str, device: torch.device | str, channels_last: str | bool = "auto") -> Precision:
    """``auto`` → bf16 where :func:`bf16_supported`, else fp32. ``channels_last="auto"`` → with bf16.

    Raises
    ------
    ConfigError
        An unknown name, or ``bf16`` on hardware that would only emulate it (slowly).
    """
    device = torch.device(device)
    if name not in PRECISIONS:
        raise ConfigError(f"precision {name!r}: use one of {', '.join(PRECISIONS)}")
    supported = bf16_supported(device)
    if name == "bf16" and not supported:
        where = "this CPU has neither AMX nor AVX-512 BF16" if device.type == "cpu" else f"{device} has no native bf16"
        raise ConfigError(f"precision=bf16: {where}, so bf16 would only be emulated (slowly); "
                          "use precision=fp32 or precision=auto")
    resolved = "bf16" if name == "bf16" or (name == "auto" and supported) else "fp32"
    if channels_last not in ("auto", True, False):
        raise ConfigError(f"channels_last {channels_last!r}: use auto, true or false")
    layout = resolved == "bf16" if channels_last == "auto" else bool(channels_last)
    if resolved == "fp32":
        exact_fp32()
    return Precision(resolved, device.type, layout)


def exact_fp32() -> None:
    """fp32 means fp32: no TF32 in this process's cuDNN convolutions (PyTorch's default uses it on
    Ampere and later GPUs, with a 10-bit mantissa) nor in its cuBLAS matrix products.

    :func:`resolve_precision` calls it whenever it resolves ``fp32``; bf16 runs keep PyTorch's
    defaults (their convolutions are bf16 anyway). It changes nothing on a CPU.
    """
    # The allow_tf32 switches, not the fp32_precision ones: setting cuDNN's conv flag alone leaves
    # PyTorch's own readers of cudnn.allow_tf32 (torch.backends.cudnn.flags, inductor) failing.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def set_deterministic(on: bool) -> None:
    """PyTorch's deterministic algorithms (``deterministic`` config key) for this process.

    On: ``torch.use_deterministic_algorithms(True, warn_only=True)`` -- an operator without a
    deterministic GPU implementation warns with its name instead of stopping a run -- cuDNN's
    autotuner off and cuBLAS's fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, when not set
    already). Off: PyTorch's defaults.
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def run_precision(cfg: object, device: torch.device | str) -> Precision:
    """The precision of a run's config (its ``precision`` and ``channels_last`` keys) on ``device``."""
    return resolve_precision(getattr(cfg, "precision", "fp32"), device, getattr(cfg, "channels_last", "auto"))
