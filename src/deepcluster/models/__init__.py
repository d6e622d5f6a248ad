"""CNNs for DeepCluster, built by name from a registry.

>>> from deepcluster.models import build_model
>>> model = build_model("lenet5", in_channels=1, input_size=28, num_classes=10, seed=0)
>>> model.embed(torch.zeros(2, 1, 28, 28)).shape  # doctest: +SKIP
torch.Size([2, 84])

Builtin architectures: ``lenet5``, ``tiny_cnn``, ``small_alexnet``, ``alexnet``, ``vgg16``;
any torchvision classification model as ``"tv:<name>"`` (e.g. ``"tv:resnet18"``).
"""

from deepcluster.models.base import DeepClusterNet, InputTooSmallError
from deepcluster.models.init import init_weights
from deepcluster.models.registry import available_models, build_model, register_model
from deepcluster.models.sobel import Sobel

# Imported for their @register_model side effect.
from deepcluster.models import alexnet as _alexnet  # noqa: E402,F401  isort: skip
from deepcluster.models import lenet as _lenet  # noqa: E402,F401  isort: skip
from deepcluster.models import vgg as _vgg  # noqa: E402,F401  isort: skip

__all__ = [
    "DeepClusterNet",
    "InputTooSmallError",
    "Sobel",
    "available_models",
    "build_model",
    "init_weights",
    "register_model",
]
