"""The golden run: ``digits_tiny`` in fp32, 3 cycles, seed 0, pinned.

It reads its own frozen copy of the preset as it was when the pins were taken
(``golden_digits.yaml``), so that tuning ``configs/digits_tiny.yaml`` does not move them.

Any change that moves a number the toolkit computes fails here. A change that moves them on
purpose updates the pins below in its own commit and says why in the commit message.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster.core.config import TrainConfig, build_config
from deepcluster.train import train

CONFIG = Path(__file__).resolve().parent / "golden_digits.yaml"

#: sha256 of the int64 assignments of cycle 3.
ASSIGNMENTS_SHA256 = "b0dfa479bf1dab5a32a5bde5b9f216d1ba3f155783f26b694174ad8e95a9944e"

#: metrics.jsonl of the three cycles.
METRICS = [
    {"cycle": 1, "loss": 2.994179592768351, "train_acc": 0.096, "nmi_prev": None,
     "nmi_labels": 0.5755037439294219, "ari_labels": 0.37933822585011745, "acc_labels": 0.464, "n_resplit": 0,
     "pca_dim_effective": 16},
    {"cycle": 2, "loss": 2.991032526016235, "train_acc": 0.12933333333333333, "nmi_prev": 0.543297127880393,
     "nmi_labels": 0.5811574553295851, "ari_labels": 0.3806945737692804, "acc_labels": 0.44466666666666665,
     "n_resplit": 0, "pca_dim_effective": 16},
    {"cycle": 3, "loss": 2.976901828765869, "train_acc": 0.13733333333333334, "nmi_prev": 0.6518509534687221,
     "nmi_labels": 0.6440474051568915, "ari_labels": 0.48125071725574803, "acc_labels": 0.5293333333333333,
     "n_resplit": 0, "pca_dim_effective": 16},
]


@pytest.mark.slow
def test_golden_run_digits_tiny_fp32(tmp_path):
    torch.set_num_threads(2)  # as conftest: the pins hold for 2 threads
    cfg = build_config(TrainConfig, CONFIG, ["cycles=3", "seed=0", "precision=fp32"])
    run = train(cfg, tmp_path / "run", show_progress=False)
    assignments = run.load_assignments(3).astype(np.int64)
    got = [{key: record.get(key) for key in METRICS[0]} for record in run.metrics()]
    for want, have in zip(METRICS, got, strict=True):
        moved = {key: (have[key], value) for key, value in want.items()
                 if (have[key] is None) != (value is None) or (value is not None and have[key] != pytest.approx(value, rel=1e-9))}
        assert not moved, (f"cycle {want['cycle']} moved (now, pinned): {moved}; if on purpose, update the pins in "
                           "their own commit and say why")
    assert hashlib.sha256(assignments.tobytes()).hexdigest() == ASSIGNMENTS_SHA256, (
        "the final assignments moved; if on purpose, update ASSIGNMENTS_SHA256 in its own commit and say why")
