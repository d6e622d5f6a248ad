"""deepcluster: clustering-based unsupervised representation learning (Caron et al., 2018),
and the tools to understand what such models learn."""

__version__ = "0.3.0"

from deepcluster.core.errors import DeepClusterError

__all__ = ["DeepClusterError", "__version__"]
