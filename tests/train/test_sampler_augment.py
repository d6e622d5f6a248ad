import numpy as np
import torch

from deepcluster.data.transforms import normalize
from deepcluster.train.augment import random_resized_crop_flip
from deepcluster.train.sampler import UniformClusterSampler


def test_sampler_is_uniform_over_clusters():
    # one giant cluster and three small ones
    assignments = np.array([0] * 900 + [1] * 50 + [2] * 40 + [3] * 10)
    s = UniformClusterSampler(assignments, seed=0)
    idx = np.array(list(s))
    assert len(idx) == len(assignments)
    counts = np.bincount(assignments[idx], minlength=4)
    assert counts.min() >= 240 and counts.max() <= 260


def test_sampler_skips_empty_ids_and_is_seeded():
    assignments = np.array([0] * 10 + [5] * 10)
    a = np.array(list(UniformClusterSampler(assignments, seed=1)))
    b = np.array(list(UniformClusterSampler(assignments, seed=1)))
    assert (a == b).all()
    assert set(assignments[a]) == {0, 5}


def test_augmentation_shapes_and_identity():
    x = normalize(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), (0.5,), (0.5,))
    g = torch.Generator().manual_seed(0)
    y = random_resized_crop_flip(x, generator=g)
    assert y.shape == x.shape and torch.isfinite(y).all()
    same = random_resized_crop_flip(x, crop=False, hflip=False)
    assert torch.equal(same, x)
    # with scale 1 and no flip, the crop is the identity up to interpolation
    ident = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, generator=g)
    assert torch.allclose(ident, x, atol=1e-4)


def test_flip_only_mirrors():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    y = random_resized_crop_flip(x, crop=False, hflip=True, generator=torch.Generator().manual_seed(0))
    flipped = torch.isclose(y, x.flip(-1)).flatten(1).all(1)
    kept = torch.isclose(y, x).flatten(1).all(1)
    assert (flipped | kept).all() and flipped.any() and kept.any()
