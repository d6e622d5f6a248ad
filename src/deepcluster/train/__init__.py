"""DeepCluster training: one cycle (:func:`run_cycle`, Caron's Algorithm 1), the runner that
repeats it into a run folder (:func:`train`), the sampler and the augmentation.

The run folder (:mod:`deepcluster.runs`), feature extraction (:mod:`deepcluster.features`) and
the clustering of features (:mod:`deepcluster.cluster`) live below, shared with every pillar.
"""

from deepcluster.train.cycle import cluster_step, run_cycle, train_epoch
from deepcluster.train.runner import train
from deepcluster.train.sampler import UniformClusterSampler

__all__ = ["UniformClusterSampler", "cluster_step", "run_cycle", "train", "train_epoch"]
