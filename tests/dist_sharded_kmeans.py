"""Run by tests/test_distributed.py under torchrun: sharded PCA + k-means of random features."""

import sys

import numpy as np

from deepcluster.cluster.pipeline import preprocess_and_cluster
from deepcluster.core import distributed
from deepcluster.core.config import TrainConfig, build_config

world = distributed.init()
rng = np.random.default_rng(0)
x = (rng.standard_normal((6000, 40)) @ rng.standard_normal((40, 40))).astype(np.float32)
results = {}
# 150 clusters of 100 distinct points (each repeated 60 times): 50+ clusters stay empty and are re-split
x = np.ascontiguousarray(x[np.arange(len(x)) % 100])
for fit_fraction, k in ((1.0, 50), (0.3, 50), (1.0, 150)):
    cfg = build_config(TrainConfig, None, [f"k={k}", "pca_dim=16", f"fit_fraction={fit_fraction}", "device=cpu"])
    step = preprocess_and_cluster(x[distributed.shard(len(x))], cfg, seed=7, sharded=world.distributed)
    results[f"{fit_fraction}_{k}"] = step.result.assignments
    results[f"{fit_fraction}_{k}_resplit"] = np.array([step.result.n_resplit])
if world.is_main:
    np.savez(sys.argv[1], **results)
distributed.shutdown()
