"""Clustering of features: preprocessing, k-means, PIC, and agreement metrics.

Each DeepCluster cycle fits a :class:`Preprocessor` (PCA-whitening + L2) on the features,
clusters them with :func:`cluster_features` (k-means or PIC), and uses the assignments as
pseudo-labels; :func:`nmi` between consecutive cycles measures stability. Its
:class:`ClusterAssigner` assigns new features to the clusters as the clustering assigned its own.
"""

from deepcluster.cluster.assigner import ClusterAssigner
from deepcluster.cluster.dispatch import METHODS, cluster_features
from deepcluster.cluster.empty import resplit_empty
from deepcluster.cluster.faiss_kmeans import kmeans
from deepcluster.cluster.metrics import ari, cluster_size_summary, clustering_accuracy, nmi
from deepcluster.cluster.pic_graph import pic
from deepcluster.cluster.pipeline import ClusterStep, preprocess_and_cluster
from deepcluster.cluster.preprocess import Preprocessor, preprocess_features
from deepcluster.cluster.result import ClusterResult

__all__ = [
    "METHODS",
    "ClusterAssigner",
    "ClusterResult",
    "ClusterStep",
    "Preprocessor",
    "ari",
    "cluster_features",
    "cluster_size_summary",
    "clustering_accuracy",
    "kmeans",
    "nmi",
    "pic",
    "preprocess_and_cluster",
    "preprocess_features",
    "resplit_empty",
]
