import pytest
import torch

from deepcluster.core.errors import ConfigError
from deepcluster.data import build_transforms, dataset_stats


def test_eval_single_and_batch():
    t = build_transforms(dataset_stats("fashion-mnist"), 28, 1, train=False, augment={})
    img = torch.full((1, 28, 28), 255, dtype=torch.uint8)
    out = t(img)
    assert out.dtype == torch.float32 and out.shape == (1, 28, 28)
    mean, std = dataset_stats("fashion-mnist")
    assert torch.allclose(out, torch.full_like(out, (1 - mean[0]) / std[0]))
    batch = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    assert t(batch).shape == (5, 1, 28, 28)
    assert torch.equal(t(batch), t(batch))


def test_eval_resizes_and_crops():
    t = build_transforms(dataset_stats("cifar10"), 24, 3, train=False, augment={})
    out = t(torch.randint(0, 256, (3, 32, 40), dtype=torch.uint8))
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32


def test_train_augments():
    torch.manual_seed(0)
    t = build_transforms(dataset_stats("cifar10"), 32, 3, train=True, augment={"crop_scale_min": 0.2})
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    outs = [t(img) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outs)
    assert not all(torch.equal(outs[0], o) for o in outs[1:])
    assert t(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)).shape == (6, 3, 32, 32)


def test_train_without_augmentation_is_eval():
    stats = dataset_stats("digits")
    img = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    t_train = build_transforms(stats, 28, 1, train=True, augment={"random_resized_crop": False, "hflip": False})
    t_eval = build_transforms(stats, 28, 1, train=False, augment={})
    assert torch.equal(t_train(img), t_eval(img))


def test_single_stat_broadcast_and_errors():
    t = build_transforms(((0.5,), (0.5,)), 8, 3, train=False, augment={})
    assert t(torch.zeros((3, 8, 8), dtype=torch.uint8)).eq(-1).all()
    with pytest.raises(ValueError):
        build_transforms(((0.5, 0.5), (0.5, 0.5)), 8, 3, train=False, augment={})
    with pytest.raises(ConfigError, match="crop_scale_min"):
        build_transforms(((0.5,), (0.5,)), 8, 1, train=True, augment={"crop_scale_min": 0})
