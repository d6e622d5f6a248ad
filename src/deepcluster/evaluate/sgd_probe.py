"""Linear probe as DeepCluster's ``eval_linear.py`` trains it: mini-batch SGD, accuracy after every epoch.

The official protocol (Caron et al., 2018) freezes the network, average-pools each conv layer to
about 9,600 dimensions (see :mod:`deepcluster.evaluate.pooling`), trains a multinomial logistic
regression with SGD (momentum 0.9, learning rate 0.01, weight decay) and reports the test accuracy.
The number to quote is the accuracy **after the last epoch**; the best epoch's accuracy is chosen
on the test set itself, so it is kept apart and labelled as optimistic.

Differences from the official script, to make it cheap and stable on a CPU: features are
standardised with the training mean/std, 30 epochs instead of 90, a cosine learning-rate decay to 0
instead of ``lr / sqrt(1 + lr·wd·t)``, no weight decay on the bias, and no data augmentation
(features are extracted once, so an epoch is a few matrix products) -- except horizontal flips
when asked (``flipped``: the features of the flipped training images, extracted once too).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from deepcluster.core.errors import DataError
from deepcluster.core.progress import progress_bar

Schedule = Literal["cosine", "constant"]

# Rows scored per matrix product when measuring accuracy (bounds the memory of the logits).
_EVAL_CHUNK = 16384


@dataclass
class SGDProbeResult:
    """Outcome of :func:`sgd_linear_probe`.

    Attributes
    ----------
    last_acc : float
        Test accuracy after the last epoch: the headline number of the protocol.
    best_acc : float
        Highest test accuracy over the epochs. Optimistic: the epoch is chosen on the test set.
    best_epoch : int
        Epoch (1-based) of ``best_acc``; the earliest one on a tie.
    train_acc : float
        Accuracy on the training features after the last epoch.
    dim : int
        Feature dimension.
    epochs : int
        Number of epochs trained.
    curve : list[float]
        Test accuracy after each epoch.
    train_loss : list[float]
        Mean training cross-entropy of each epoch (without the weight-decay term).
    """

    last_acc: float
    best_acc: float
    best_epoch: int
    train_acc: float
    dim: int
    epochs: int
    curve: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of every field."""
        return asdict(self)


def standardize(train: np.ndarray, test: np.ndarray, *more: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Copies of ``train``, ``test`` (and ``more``) as float32 tensors, scaled by the mean/std of ``train``.

    Dimensions that are constant on ``train`` are zeroed (see :func:`standardizer`).

    Parameters
    ----------
    train, test, *more : np.ndarray
        Features (N, D), (M, D), ...; never modified.

    Returns
    -------
    tuple[torch.Tensor, ...]
        The standardised copies, in the same order.
    """
    copies = [torch.from_numpy(np.array(x, dtype=np.float32, copy=True)) for x in (train, test, *more)]
    mean, scale = standardizer(copies[0])
    for x in copies:
        x.sub_(mean).mul_(scale)
    return tuple(copies)


def standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and scale (1/std) of ``x`` (N, D); the scale is 0 where ``x`` is constant.

    A dimension constant on the training set carries no information a linear model could learn;
    dividing it by ~0 would blow up its test values (and the untrained initial weight on it would
    then decide the prediction), so it is zeroed instead.
    """
    mean = x.mean(0, dtype=torch.float64).float()
    std = x.std(0).float() if len(x) > 1 else torch.zeros(x.shape[1])
    return mean, torch.where(std > 1e-6, 1.0 / std.clamp_min(1e-6), torch.zeros_like(std))


@torch.no_grad()
def _accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    correct = 0
    for start in range(0, len(x), _EVAL_CHUNK):
        logits = x[start : start + _EVAL_CHUNK] @ w + b
        correct += int((logits.argmax(1) == y[start : start + _EVAL_CHUNK]).sum())
    return correct / max(len(x), 1)


def _check_inputs(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> None:
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise DataError(f"features must be 2-D with the same width, got {train_x.shape} and {test_x.shape}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(f"features and labels differ in length: {len(train_x)} vs {len(train_y)} (train), "
                        f"{len(test_x)} vs {len(test_y)} (test)")
    if len(train_x) == 0 or len(test_x) == 0:
        raise DataError("the linear probe needs at least one training and one test sample")


def sgd_linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    schedule: Schedule = "cosine",
    seed: int = 0,
    device: torch.device | str = "cpu",
    description: str = "linear probe",
    show_progress: bool = False,
    flipped: np.ndarray | None = None,
) -> SGDProbeResult:
    """Train a multinomial logistic regression on frozen features with mini-batch SGD.

    Parameters
    ----------
    train, test : tuple of np.ndarray
        ``(features, labels)``: features (N, D), standardised with the mean and std of the
        training features; integer labels in ``[0, n_classes)``.
    epochs : int
        Passes over the training features; the test accuracy is measured after each.
    batch_size : int
        Mini-batch size.
    lr : float
        Initial learning rate.
    momentum : float
        SGD momentum.
    weight_decay : float
        L2 penalty on the weights (not on the bias).
    schedule : {"cosine", "constant"}
        ``"cosine"`` decays the learning rate to 0 over all steps, step by step.
    seed : int
        Seeds the initial weights and the order of the samples: the result is deterministic.
    device : torch.device or str
        Where to train (features are moved there once).
    description : str
        Label of the progress bar.
    show_progress : bool
        Show a progress bar over epochs.
    flipped : np.ndarray or None
        Features (N, D) of the horizontally flipped training images, row for row: each step then
        trains on the flipped features of a random half of its samples (each sample flipped with
        probability 1/2, drawn from ``seed``), as ``RandomHorizontalFlip`` in the probe's training
        transform does. They are standardised with the unflipped features' mean and std.

    Returns
    -------
    SGDProbeResult

    Raises
    ------
    DataError
        If the features or labels are malformed.
    """
    (train_x, train_y), (test_x, test_y) = train, test
    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    _check_inputs(train_x, np.asarray(train_y), test_x, np.asarray(test_y))
    device = torch.device(device)
    if flipped is not None and np.shape(flipped) != train_x.shape:
        raise DataError(f"flipped features {np.shape(flipped)} do not match the training features {train_x.shape}")
    xtr, xte, *xfl = (x.to(device) for x in standardize(train_x, test_x, *(() if flipped is None else (flipped,))))
    xfl = xfl[0] if xfl else None
    ytr = torch.from_numpy(np.asarray(train_y, dtype=np.int64)).to(device)
    yte = torch.from_numpy(np.asarray(test_y, dtype=np.int64)).to(device)
    n, dim = xtr.shape
    n_classes = int(max(int(ytr.max()), int(yte.max()))) + 1

    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(dim, n_classes, generator=g) * 0.01).to(device).requires_grad_()
    b = torch.zeros(n_classes, device=device, requires_grad=True)
    opt = torch.optim.SGD([{"params": [w], "weight_decay": weight_decay}, {"params": [b], "weight_decay": 0.0}],
                          lr=lr, momentum=momentum)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch

    curve: list[float] = []
    losses: list[float] = []
    step = 0
    with progress_bar(description, total=epochs, enabled=show_progress) as advance:
        for _ in range(epochs):
            order = torch.randperm(n, generator=g).to(device)
            epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
            for start in range(0, n, batch_size):
                if schedule == "cosine":
                    for group in opt.param_groups:
                        group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))
                idx = order[start : start + batch_size]
                xb = xtr[idx]
                if xfl is not None:
                    flip = (torch.rand(len(idx), generator=g) < 0.5).to(device)
                    xb = torch.where(flip[:, None], xfl[idx], xb)
                loss = F.cross_entropy(xb @ w + b, ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                epoch_loss += loss.detach() * len(idx)
                step += 1
            losses.append(float(epoch_loss) / n)
            curve.append(_accuracy(xte, yte, w.detach(), b.detach()))
            advance(1)
    best = int(np.argmax(curve))  # first maximum: the earliest epoch on a tie
    return SGDProbeResult(
        last_acc=curve[-1], best_acc=curve[best], best_epoch=best + 1,
        train_acc=_accuracy(xtr, ytr, w.detach(), b.detach()), dim=int(dim), epochs=epochs,
        curve=curve, train_loss=losses,
    )
