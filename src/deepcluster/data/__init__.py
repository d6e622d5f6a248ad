"""Image dataset loaders.

Every loader returns an :class:`ImageDataset` of uint8 images C×H×W (labels kept aside in
``dataset.labels``). Bad input raises :class:`deepcluster.core.errors.DataError` with the file
and the fix in its message.

>>> ds = load_dataset("digits", limit=100)
>>> ds[0].shape, ds.images_tensor().dtype
(torch.Size([1, 28, 28]), torch.uint8)
"""

from deepcluster.data.base import FolderImageDataset, ImageDataset, TensorImageDataset
from deepcluster.data.folder import DEFAULT_FOLDER_SIZE, IMG_EXTENSIONS
from deepcluster.data.registry import (
    DEFAULT_ROOTS,
    SPLITS,
    available_datasets,
    dataset_stats,
    load_dataset,
)
from deepcluster.data.transforms import build_transforms

__all__ = [
    "DEFAULT_FOLDER_SIZE",
    "DEFAULT_ROOTS",
    "IMG_EXTENSIONS",
    "SPLITS",
    "FolderImageDataset",
    "ImageDataset",
    "TensorImageDataset",
    "available_datasets",
    "build_transforms",
    "dataset_stats",
    "load_dataset",
]
