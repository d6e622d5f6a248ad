"""Initial Alignment over a grid of settings: what ``deepcluster ia`` computes.

``--set k=5,10,20 --set pca_dim=off,32`` makes a grid (comma-separated values) and plain
``--set key=value`` items fix a key. Every setting is validated before any work starts, and
settings that share their data (same ``data`` section) load it once.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from deepcluster.analysis.alignment import IAResult, apply_setting, initial_alignment, labels_for_ia
from deepcluster.analysis.progress_log import duration
from deepcluster.core.config import TrainConfig
from deepcluster.core.errors import ConfigError
from deepcluster.data.splits import load_train_data

__all__ = ["expand_grid", "ia_grid", "split_grid"]


def split_grid(items: Sequence[str] | None) -> tuple[list[str], dict[str, list[Any]]]:
    """``k=5,10,20`` → a grid axis; ``k=5`` or ``layers=[a,b]`` → a plain override."""
    fixed: list[str] = []
    grid: dict[str, list[Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE or KEY=V1,V2,... (e.g. --set k=5,10,20)")
        if "," in raw and not raw.lstrip().startswith(("[", "{")):
            values = [yaml.safe_load(v) if v.strip() not in {"off", "none", "None"} else None for v in raw.split(",")]
            grid[key.strip()] = values
        else:
            fixed.append(item)
    return fixed, grid


def expand_grid(base: TrainConfig, grid: dict[str, list[Any]]) -> list[tuple[dict[str, Any], TrainConfig]]:
    """Every combination of the grid's values as (setting, validated config); ``[({}, base)]`` for no grid."""
    settings = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] or [{}]
    return [(setting, apply_setting(base, setting)) for setting in settings]


def ia_grid(
    base: TrainConfig,
    grid: dict[str, list[Any]],
    seeds: Sequence[int],
    *,
    labelled: int | None = None,
    label_file: str | Path | None = None,
    method: str = "auto",
    show_progress: bool = True,
    on_result: Callable[[IAResult], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[IAResult]:
    """IA of the initialisations ``seeds`` under every setting of ``grid`` (see :func:`initial_alignment`).

    ``labelled`` / ``label_file`` choose the labels IA is computed on (:func:`labels_for_ia`);
    ``on_result`` receives each setting's result as soon as it is known. ``log`` receives what
    runs (settings × networks × images) before the first setting, progress lines while a setting
    runs longer than 10 s, and the time left after each setting.
    """
    settings = expand_grid(base, grid)  # validate every setting before any work
    data_cache: dict[str, Any] = {}
    results = []
    start = time.perf_counter()
    for i, (setting, cfg) in enumerate(settings):
        key = cfg.data.model_dump_json()
        if key not in data_cache:
            data = load_train_data(cfg)
            data_cache[key] = (data, labels_for_ia(data, labelled=labelled, label_file=label_file, seed=cfg.seed))
        data, labels = data_cache[key]
        if log is not None and i == 0:
            ks = ",".join(str(k) for k in sorted({c.k for _, c in settings}))
            log(f"Initial Alignment: {len(settings)} setting(s) × {len(seeds)} random {cfg.model.arch} networks on "
                f"{len(data)} images (k={ks}), each clustered as cycle 1 of training would")
        res = initial_alignment(cfg, seeds, labels=labels, data=data, method=method, setting=setting,
                                show_progress=show_progress, log=log)
        if on_result is not None:
            on_result(res)
        results.append(res)
        if log is not None and i + 1 < len(settings):
            spent = time.perf_counter() - start
            log(f"{i + 1}/{len(settings)} settings in {duration(spent)}, about "
                f"{duration(spent / (i + 1) * (len(settings) - i - 1))} left")
    return results
