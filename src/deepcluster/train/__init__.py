"""DeepCluster training: the cycle (:mod:`.cycle`), its runner, the sampler and augmentation.

The run folder (:mod:`deepcluster.runs`), feature extraction (:mod:`deepcluster.features`) and
the clustering of features (:mod:`deepcluster.cluster`) live below, shared with every pillar.
"""

from deepcluster.train.cycle import cluster_step, train_epoch
from deepcluster.train.runner import train
from deepcluster.train.sampler import UniformClusterSampler

__all__ = ["UniformClusterSampler", "cluster_step", "train", "train_epoch"]
