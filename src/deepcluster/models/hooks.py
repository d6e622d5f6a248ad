"""Read the outputs of named layers during a forward pass, and stop it there (timm's ``FeatureHooks``).

Everything that needs an inner layer's output -- probe features, dissection, gradient ascent --
goes through :func:`capture_outputs`: forward hooks record the outputs of the given modules and,
once every one has been recorded, the rest of the forward pass is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["capture_outputs"]


class _AllCaptured(Exception):
    """Raised from a forward hook once every wanted output is recorded: the forward stops there."""


def capture_outputs(
    forward: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    modules: Mapping[str, nn.Module],
    *,
    transform: Callable[[Any], Any] | None = None,
    stop: bool = True,
) -> dict[str, Any]:
    """Run ``forward(x)`` and return the output of each module of ``modules``, by name.

    Parameters
    ----------
    forward : callable
        What to run, e.g. ``model`` or ``model.embed``; the modules must lie on its path.
    x : torch.Tensor
        Its input.
    modules : mapping of str to nn.Module
        Name → module whose output is wanted (names are only the keys of the result).
    transform : callable, optional
        Applied to each output as it is recorded (e.g. ``flatten`` then ``clone``: a later
        in-place operation such as ``ReLU(inplace=True)`` would otherwise change it).
    stop : bool
        Skip the rest of the forward once every output is recorded.

    Returns
    -------
    dict
        Name → recorded output, for the modules the forward reached (a module it did not reach
        is missing: callers say which layer that was).
    """
    outputs: dict[str, Any] = {}
    wanted = len(modules)

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            outputs[name] = transform(output) if transform is not None else output
            if stop and len(outputs) == wanted:
                raise _AllCaptured

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        forward(x)
    except _AllCaptured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return outputs
