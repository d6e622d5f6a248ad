"""BatchNorm whose training statistics are those of the whole global batch, on CPUs too.

``torch.nn.SyncBatchNorm`` only runs on GPUs (its kernels are CUDA's). With several processes
each training on its share of a batch, plain BatchNorm normalises with per-share statistics, so
the run differs from a single process; synchronised, the per-channel sums and sums of squares
are all-reduced (``torch.distributed.nn.functional.all_reduce``, which differentiates through the
collective, see :class:`_AllReduceSum`) and every share is normalised with the global batch's
mean and variance, the backward pass reducing its gradients the same way. On CUDA :func:`convert_sync_batchnorm` uses
PyTorch's own ``SyncBatchNorm``; in a single process both are plain BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """``torch.distributed.all_reduce`` (sum) that differentiates: the gradient of a sum over
    ranks, seen by every rank, is the sum of every rank's gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = grad.clone()
        dist.all_reduce(out)
        return out


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input rank) synchronised over the default process group in training mode."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        sync = (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)
        if not sync:
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        x = input.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        xd = x.double()
        stats = _AllReduceSum.apply(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]))
        channels = x.shape[1]
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp(min=0)
        shape = [1, channels] + [1] * (input.dim() - 2)
        y = (x - mean.float().view(shape)) * torch.rsqrt(var.float().view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm layer synchronised (weights and running statistics kept;
    state-dict keys unchanged, so checkpoints load either way)."""
    if any(p.is_cuda for p in module.parameters()):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module
