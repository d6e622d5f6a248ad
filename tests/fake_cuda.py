"""Running our code as if a GPU were there, on a machine without one.

:func:`fake_cuda` enters PyTorch's ``FakeTensorMode``: every tensor becomes a fake one (shape,
dtype and device, no data), so a network, a batch or a k-means can be "placed" on ``cuda:0`` and
every operator checks, as it would on a real GPU, that its inputs share a device. That catches
device placement -- a CPU batch fed to a CUDA model, a CPU ``zeros`` added to CUDA activations --
not numbers or speed.

Fake tensors hold no values, so the few places where PyTorch would hand values to Python are
given stand-ins while inside (never our own code): ``numpy()`` of a fake CPU tensor is a fixed
pseudo-random array of its shape (``numpy()`` of a CUDA one fails, as it does on a GPU),
``item()``/``tolist()``/``int()``/``float()``/``bool()`` are 1, pinning memory keeps the tensor, ``torch.cuda``
reports one device, moving a module made of fake tensors swaps its parameters even
though the fake mode holds weak references to them, and ``backward()`` -- whose engine needs a real CUDA
context -- gives every leaf it reaches a zero gradient on that leaf's device, as a real backward
places them. Operators whose output shape depends on values (``nonzero``, boolean masks)
cannot run on fake tensors (``bincount`` with ``minlength`` is given the shape it has when every
value is below it): tests stop short of them or call the parts around them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

CUDA = torch.device("cuda", 0)


def _numpy(self: torch.Tensor, *, force: bool = False) -> np.ndarray:
    if self.device.type != "cpu":  # what a real GPU tensor says
        raise TypeError(f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to copy the "
                        "tensor to host memory first.")
    np_dtype = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
                torch.bfloat16: np.float32, torch.int64: np.int64, torch.int32: np.int32, torch.uint8: np.uint8,
                torch.bool: np.bool_, torch.int16: np.int16, torch.int8: np.int8}[self.dtype]
    shape = tuple(int(s) for s in self.shape)
    rng = np.random.default_rng(sum(shape) + len(shape))
    if np.issubdtype(np_dtype, np.floating):
        return rng.standard_normal(shape).astype(np_dtype)
    if np_dtype is np.bool_:
        return np.ones(shape, dtype=bool)
    return rng.integers(1, 3, size=shape).astype(np_dtype)  # no zero counts (an "empty cluster")


def _item(self: torch.Tensor):
    return 1.0 if self.dtype.is_floating_point else 1


def _tolist(self: torch.Tensor):
    return np.ones(tuple(int(s) for s in self.shape)).astype(float if self.dtype.is_floating_point else int).tolist()


_BACKWARD = torch.Tensor.backward


class _NoWeakrefs:
    """``torch.utils.swap_tensors`` refuses tensors with weak references, which the fake mode
    keeps on every tensor it converts: inside, it sees none."""

    @staticmethod
    def getweakrefs(obj):
        return []


def _backward(self: torch.Tensor, *args, **kwargs) -> None:
    if not isinstance(self, FakeTensor):
        return _BACKWARD(self, *args, **kwargs)
    todo, seen = [self.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        leaf = getattr(fn, "variable", None)
        if leaf is not None:
            leaf.grad = torch.zeros_like(leaf) if leaf.grad is None else leaf.grad
        todo.extend(f for f, _ in fn.next_functions)
    return None


_BINCOUNT = torch.bincount


def _bincount(input: torch.Tensor, weights: torch.Tensor | None = None, minlength: int = 0) -> torch.Tensor:
    if not isinstance(input, FakeTensor) or minlength < 1:
        return _BINCOUNT(input, weights, minlength)
    # the shape a real bincount has when every value is below minlength (as its callers ensure)
    ones = torch.ones_like(input) if weights is None else weights
    return torch.zeros(minlength, dtype=ones.dtype, device=input.device).index_add_(0, input, ones)


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeTensorMode]:
    """Inside, tensors are fake and ``cuda:0`` exists (see the module's docstring)."""
    patches = [
        mock.patch.object(FakeTensor, "numpy", _numpy, create=True),
        mock.patch.object(FakeTensor, "item", _item, create=True),
        mock.patch.object(FakeTensor, "tolist", _tolist, create=True),
        mock.patch.object(FakeTensor, "__bool__", lambda self: True, create=True),
        mock.patch.object(FakeTensor, "__int__", lambda self: 1, create=True),
        mock.patch.object(FakeTensor, "__float__", lambda self: 1.0, create=True),
        mock.patch("torch.utils.weakref", _NoWeakrefs),
        mock.patch.object(torch.Tensor, "backward", _backward),
        mock.patch("torch.bincount", _bincount),
        mock.patch.object(torch.Tensor, "pin_memory", lambda self, *a, **k: self),
        mock.patch.object(torch.Tensor, "is_pinned", lambda self, *a, **k: False),
        mock.patch("torch.cuda.is_available", lambda: True),
        # the fake mode asks is_available whether it may touch the device: it may not
        mock.patch.object(FakeTensorMode, "avoid_device_init", property(lambda self: True)),
        mock.patch("torch.cuda.device_count", lambda: 1),
        mock.patch("torch.cuda.current_device", lambda: 0),
        mock.patch("torch.cuda.set_device", lambda *a, **k: None),
        mock.patch("torch.cuda.synchronize", lambda *a, **k: None),
        mock.patch("torch.cuda.is_bf16_supported", lambda *a, **k: True),
        mock.patch("torch.cuda.get_device_properties",
                   lambda *a, **k: mock.Mock(total_memory=80 << 30, name="fake", major=9, minor=0,
                                             L2_cache_size=50 << 20, multi_processor_count=132)),
        mock.patch("torch.cuda.mem_get_info", lambda *a, **k: (70 << 30, 80 << 30)),
    ]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        mode = stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        yield mode


def on_cuda(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its parameters and buffers on fake ``cuda:0`` (inside :func:`fake_cuda`)."""
    return module.to(CUDA)


def devices(module: torch.nn.Module) -> set[torch.device]:
    """The devices of ``module``'s parameters and buffers."""
    return {t.device for t in [*module.parameters(), *module.buffers()]}
