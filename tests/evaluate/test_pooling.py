import numpy as np
import pytest
import torch

from deepcluster.core.errors import ConfigError
from deepcluster.evaluate import extract_pooled_features, pool_to_budget, pooled_side
from deepcluster.evaluate.pooling import pixel_features, pooled_dim
from deepcluster.features import FeatureOptions, extract_features
from deepcluster.models import build_model


@pytest.mark.parametrize(("shape", "side", "dim"), [
    ((96, 27, 27), (10, 10), 9600),   # AlexNet conv1 (224 px): the official 96×10×10
    ((256, 13, 13), (6, 6), 9216),    # conv2: 256×6×6
    ((384, 13, 13), (5, 5), 9600),    # conv3 / conv4: 384×5×5
    ((256, 6, 6), (6, 6), 9216),      # conv5 already fits: natural size
    ((6, 14, 14), (14, 14), 1176),    # LeNet-5 conv1: small nets keep their natural size
    ((16, 5, 5), (5, 5), 400),
])
def test_pool_budget_arithmetic(shape, side, dim):
    assert pooled_side(*shape, budget=9600) == side
    assert pooled_dim(shape, 9600) == dim <= 9600


def test_budget_edge_cases():
    assert pooled_side(20000, 4, 4, 9600) == (1, 1)  # more channels than the budget: one value each
    assert pooled_side(10, 3, 50, 100) == (3, 3)  # never larger than the map
    assert pooled_dim((84,), 10) == 84  # FC layers untouched
    with pytest.raises(ConfigError):
        pooled_side(4, 4, 4, 0)


def test_pool_to_budget_shapes_and_values():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(pool_to_budget(x, 48), x.flatten(1))  # fits: untouched
    p = pool_to_budget(x, 12)  # 3·2·2
    assert p.shape == (2, 12)
    assert torch.allclose(p.reshape(2, 3, 2, 2)[0, 0, 0, 0], x[0, 0, :2, :2].mean())
    assert pool_to_budget(x, 3).shape == (2, 3)
    fc = torch.randn(5, 84)
    assert torch.equal(pool_to_budget(fc, 10), fc)


def test_layer_outputs_unflattened_keeps_default():
    model = build_model("tiny_cnn", in_channels=1, input_size=28, seed=0).eval()
    x = torch.randn(3, 1, 28, 28)
    flat = model.layer_outputs(x, ["conv1", "fc2"])
    maps = model.layer_outputs(x, ["conv1", "fc2"], flatten=False)
    assert flat["conv1"].shape == (3, 16 * 14 * 14) and maps["conv1"].shape == (3, 16, 14, 14)
    assert maps["fc2"].shape == (3, 32)
    assert torch.equal(maps["conv1"].flatten(1), flat["conv1"])


def test_pooled_extraction_matches_plain_extraction_within_budget():
    model = build_model("tiny_cnn", in_channels=1, input_size=28, seed=0)
    images = torch.randint(0, 255, (10, 1, 28, 28), dtype=torch.uint8)
    reader = FeatureOptions((0.5,), (0.5,), batch_size=4, show_progress=False)
    plain = extract_features(model, images, reader, layers=["conv1", "fc1"])
    pooled = extract_pooled_features(model, images, reader, layers=["conv1", "fc1"], budget=10**6)
    for k in plain:
        np.testing.assert_allclose(pooled[k], plain[k], rtol=1e-6)
    small = extract_pooled_features(model, images, reader, layers=["conv1", "fc1"], budget=16 * 9)
    assert small["conv1"].shape == (10, 144) and small["fc1"].shape == (10, 64)
    assert small["conv1"].dtype == np.float32 and small["conv1"].flags.c_contiguous


def test_pixel_features():
    images = torch.full((3, 1, 28, 28), 255, dtype=torch.uint8)
    assert pixel_features(images).shape == (3, 784) and pixel_features(images).max() == 1.0
    assert pixel_features(images, budget=49).shape == (3, 49)
