"""scikit-learn's bundled 8×8 handwritten digits, upsampled so LeNet-sized models fit."""

from __future__ import annotations

import numpy as np
import torch

from deepcluster.data.base import TensorImageDataset, resize_images

#: Default side of the digits images: LeNet expects 28×28 like MNIST.
DEFAULT_DIGITS_SIZE = 28
#: Samples in the "train" split; the remaining 297 of 1797 form "test".
TRAIN_SIZE = 1500
# Fixed so that the train/test split never depends on the user's seed.
_SPLIT_SEED = 0


def load_digits_dataset(split: str, image_size: int | None = None) -> TensorImageDataset:
    """Load the ``split`` of sklearn's digits as uint8 1×S×S images (S = 28 by default)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(bunch.images))
    order = order[:TRAIN_SIZE] if split == "train" else order[TRAIN_SIZE:]
    # Pixel values are 0..16 counts of set bits in a 4×4 block; scale them to the 0..255 range.
    pixels = np.rint(bunch.images[order] * (255.0 / 16.0)).astype(np.uint8)
    images = torch.from_numpy(pixels).unsqueeze(1)
    size = DEFAULT_DIGITS_SIZE if image_size is None else image_size
    images = resize_images(images, size)
    return TensorImageDataset(
        "digits", images, bunch.target[order].astype(np.int64), [str(d) for d in range(10)]
    )
