"""Linear probe: multinomial logistic regression on frozen features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class ProbeResult:
    train_acc: float
    test_acc: float
    dim: int


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    xtr = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32))
    xte = torch.from_numpy(np.ascontiguousarray(test, dtype=np.float32))
    mean = xtr.mean(0, keepdim=True)
    std = xtr.std(0, keepdim=True).clamp_min(1e-6)
    return (xtr - mean) / std, (xte - mean) / std


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
    seed: int = 0,
) -> ProbeResult:
    """Fit a multinomial logistic regression on standardised ``train_x`` and report accuracies.

    Full-batch L-BFGS with an L2 penalty: deterministic and converged without tuning a
    learning rate, and seconds on 60,000 × 1,000 features on a CPU.
    """
    g = torch.Generator().manual_seed(seed)
    xtr, xte = _standardize(train_x, test_x)
    ytr = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    yte = torch.from_numpy(np.asarray(test_y, dtype=np.int64))
    n_classes = int(max(ytr.max(), yte.max())) + 1
    w = (torch.randn(xtr.shape[1], n_classes, generator=g) * 0.01).requires_grad_()
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, ytr) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_acc = float(((xtr @ w + b).argmax(1) == ytr).float().mean())
        test_acc = float(((xte @ w + b).argmax(1) == yte).float().mean())
    return ProbeResult(train_acc=train_acc, test_acc=test_acc, dim=int(xtr.shape[1]))
