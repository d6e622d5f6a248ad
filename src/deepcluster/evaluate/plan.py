"""What ``deepcluster evaluate`` is about to compute, and about how long it will take.

Before any protocol runs, the suite says what is left to compute (what the cache does not hold)
and an estimate of its duration, with the switches that shorten it. The estimate counts each
protocol's floating-point work (matrix products of features and weights) and its optimiser steps,
at the speed this machine shows on a small benchmark of the same kind of product, timed when the
first plan is made (a fraction of a second); feature extraction is timed on one batch of images.
It is an order of magnitude ("about 40 s"), not a promise: the machine's load changes as it runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from deepcluster.evaluate.protocols import LOWSHOT_MAX_ITER, cpu_threads


@dataclass(frozen=True)
class Speed:
    """What this machine does: floating-point operations per second of one CPU thread in a probe's
    small matrix products (``flops``) and of every thread in one large product (``gemm``: faiss's
    kNN search), and the fixed cost of one optimiser step (Python, autograd, the optimiser)."""

    flops: float
    step: float
    gemm: float


_SPEED: Speed | None = None


def machine_speed() -> Speed:
    """:class:`Speed` measured once per process (about 0.1 s): a logistic-regression step on
    256 × 1,024 features and on 8 × 16 (one thread), a 512 × 2,048 × 512 product (all threads)."""
    global _SPEED
    if _SPEED is None:
        with cpu_threads(1):
            g = torch.Generator().manual_seed(0)

            def per_step(rows: int, dim: int, repeats: int) -> float:
                x = torch.randn(rows, dim, generator=g)
                w = torch.zeros(dim, 10, requires_grad=True)
                y = torch.zeros(rows, dtype=torch.long)
                best = math.inf
                for _ in range(3):
                    t0 = time.perf_counter()
                    for _ in range(repeats):
                        loss = torch.nn.functional.cross_entropy(x @ w, y)
                        loss.backward()
                        w.grad = None
                    best = min(best, (time.perf_counter() - t0) / repeats)
                return best

            tiny = per_step(8, 16, 20)
            big = per_step(256, 1024, 10)
        a, b = torch.randn(512, 2048, generator=g), torch.randn(2048, 512, generator=g)
        gemm = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            gemm = min(gemm, time.perf_counter() - t0)
        _SPEED = Speed(flops=4 * 256 * 1024 * 10 / max(big - tiny, 1e-6), step=tiny,
                       gemm=2 * 512 * 2048 * 512 / max(gemm, 1e-6))
    return _SPEED


def protocol_seconds(protocol: str, params: dict[str, Any], n_fit: int, n_scored: int, dim: int, n_classes: int,
                     speed: Speed) -> float:
    """Estimated seconds of one protocol on ``n_fit`` fitted and ``n_scored`` scored feature rows of ``dim``."""
    c = max(n_classes, 2)
    if protocol == "linear" and params.get("probe") == "sgd":
        steps = params["epochs"] * math.ceil(n_fit / params["batch_size"])
        return (steps * (speed.step + 4 * params["batch_size"] * dim * c / speed.flops)
                + params["epochs"] * 2 * (n_scored + n_fit / params["epochs"]) * dim * c / speed.flops)
    if protocol == "linear":
        evals = params["max_iter"] * 1.25
        return evals * (speed.step + 4 * n_fit * dim * c / speed.flops)
    if protocol == "knn":
        return 2 * n_fit * n_scored * dim / speed.gemm
    if protocol == "lowshot":
        total = 0.0
        evals = 0.8 * LOWSHOT_MAX_ITER * 1.25  # L-BFGS usually stops before its last iteration
        for n in params["n"]:
            m = n * c
            width = m if 2 * m < dim else dim  # fitted in the samples' span when smaller
            span = 4 * 2 * m * m * dim / speed.flops if width < dim else 0.0  # float64 Gram and basis
            fit = evals * (speed.step + 4 * m * width * c / speed.flops)
            total += params["repeats"] * (span + fit + 2 * n_scored * dim * c / speed.flops)
        return total
    return 0.0


@dataclass
class RunPlan:
    """What one run has left to compute, and the estimate of each part's seconds."""

    name: str
    numbers: int = 0  # (checkpoint, layer, protocol) results to compute
    cached: int = 0
    checkpoints: list[str] = field(default_factory=list)  # their labels: "random (init)", "trained (last)"
    layers: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    pixels: bool = False  # the raw-pixel baseline is among them
    seconds: dict[str, float] = field(default_factory=dict)  # "features", "linear", "knn", "lowshot"

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + seconds

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def about(seconds: float) -> str:
    """``"about 40 s"``, ``"about 3 min"``, ``"under a second"``: an estimate's precision, no more."""
    if seconds < 1:
        return "under a second"
    if seconds < 10:
        return f"about {seconds:.0f} s"
    if seconds < 100:
        return f"about {round(seconds, -1):.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def shorter_hints(plan: RunPlan, ecfg: Any) -> list[str]:
    """The switches that shorten this plan, most effective first."""
    hints: list[tuple[float, str]] = []
    s = plan.seconds
    if s.get("lowshot", 0) > 2:
        hints.append((s["lowshot"], f"--protocols {','.join(p for p in plan.protocols if p != 'lowshot') or 'knn'} "
                                    f"(low-shot is {about(s['lowshot'])})"))
        if ecfg.lowshot_repeats > 1:
            hints.append((s["lowshot"] * (1 - 1 / ecfg.lowshot_repeats), "--set lowshot_repeats=1"))
    if s.get("linear", 0) > 2:
        if ecfg.probe == "sgd" and ecfg.probe_epochs > 10:
            hints.append((s["linear"] * (1 - 10 / ecfg.probe_epochs), "--set probe_epochs=10"))
    if len(plan.layers) > 1:
        hints.append((plan.total * (1 - 1 / len(plan.layers)), f"--layers {plan.layers[-1]} (one of "
                                                                 f"{', '.join(plan.layers)})"))
    if s.get("features", 0) > 2 or plan.total > 60:
        hints.append((plan.total / 2, "--set train_limit=N --set test_limit=N (fewer images)"))
    return [h for _, h in sorted(hints, key=lambda t: -t[0])]


def plan_message(plan: RunPlan, ecfg: Any) -> list[str]:
    """The lines ``evaluate`` prints before computing: what, how long, how to make it shorter."""
    if not plan.numbers:
        return [f"{plan.name}: all {plan.cached} numbers are in the cache"]
    parts = ", ".join(f"{k} {about(v)}" for k, v in sorted(plan.seconds.items(), key=lambda kv: -kv[1]) if v >= 0.5)
    what = " × ".join(", ".join(x) for x in (plan.checkpoints, plan.layers) if x)
    what = " + ".join(x for x in (what, "raw pixels" if plan.pixels else "") if x)
    lines = [f"{plan.name}: {plan.numbers} numbers to compute ({what}; {', '.join(plan.protocols)}), "
             f"{plan.cached} from the cache: {about(plan.total)}" + (f" ({parts})" if parts else "")]
    hints = shorter_hints(plan, ecfg) if plan.total > 10 else []
    if hints:
        lines.append("  shorter: " + "; ".join(hints[:3]))
    return lines
