"""DeepCluster training: the cycle (:mod:`.cycle`), its runner and the run folder."""

from deepcluster.train.cycle import cluster_step, train_epoch
from deepcluster.train.features import extract_features, resolve_device
from deepcluster.train.run_folder import RunFolder, build_network
from deepcluster.train.runner import load_train_data, train
from deepcluster.train.sampler import UniformClusterSampler

__all__ = [
    "RunFolder",
    "UniformClusterSampler",
    "build_network",
    "cluster_step",
    "extract_features",
    "load_train_data",
    "resolve_device",
    "train",
    "train_epoch",
]
