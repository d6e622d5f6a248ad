"""Registry, errors and torchvision backbones."""

import pytest
import torch
from torch import nn

from deepcluster.core.errors import ConfigError
from deepcluster.models import available_models, build_model, register_model


def test_available_models():
    names = available_models()
    for arch in ("lenet5", "tiny_cnn", "small_alexnet", "alexnet", "vgg16"):
        assert arch in names
    assert names[-1].startswith("tv:")


def test_unknown_arch_lists_available():
    with pytest.raises(ConfigError, match="unknown model arch 'resnet9000'.*lenet5.*vgg16"):
        build_model("resnet9000")
    with pytest.raises(ConfigError, match="torchvision.*resnet18"):
        build_model("tv:resnet9000")


@pytest.mark.parametrize("arch,channels,size,minimum", [
    ("alexnet", 3, 28, 63), ("vgg16", 3, 16, 32), ("lenet5", 1, 8, 12), ("small_alexnet", 3, 4, 8),
])
def test_input_too_small_names_minimum(arch, channels, size, minimum):
    with pytest.raises(ConfigError, match=f"at least {minimum} px"):
        build_model(arch, in_channels=channels, input_size=size)
    model = build_model(arch, in_channels=channels, input_size=minimum)
    assert model.embed(torch.randn(2, channels, minimum, minimum)).shape == (2, model.feature_dim)


@pytest.mark.parametrize("kwargs", [{"in_channels": 0}, {"input_size": 0}, {"num_classes": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        build_model("lenet5", **kwargs)


def test_register_model_rejects_duplicates_and_tv_prefix():
    with pytest.raises(ValueError):
        register_model("lenet5")(lambda c, s: None)
    with pytest.raises(ValueError):
        register_model("tv:mine")


def test_build_model_with_sobel_and_top_layer():
    model = build_model("tiny_cnn", in_channels=3, input_size=32, sobel=True, num_classes=9, seed=5)
    assert model.arch == "tiny_cnn" and model.sobel is not None and model.top_layer.out_features == 9


def test_tv_resnet18_grayscale():
    model = build_model("tv:resnet18", in_channels=1, input_size=28, num_classes=10)
    assert model.arch == "tv:resnet18"
    assert model.features.conv1.in_channels == 1
    assert model.features.conv1.kernel_size == (7, 7) and model.features.conv1.stride == (2, 2)
    assert isinstance(model.features.fc, nn.Identity)
    assert len(model.classifier) == 0
    assert model.feature_dim == 512
    assert list(model.probe_layers()) == ["layer1", "layer2", "layer3", "layer4", "pool"]
    assert model.default_probe_layer == "layer4"
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    assert model.embed(x).shape == (2, 512)
    outs = model.layer_outputs(x, ["layer1", "pool"])
    assert outs["layer1"].shape == (2, 64 * 7 * 7)
    assert outs["pool"].shape == (2, 512)
    # The DeepCluster init covers torchvision backbones too.
    assert torch.all(model.features.bn1.weight == 1)
    assert model.features.layer4[0].conv1.weight.std().item() == pytest.approx((2 / (9 * 512)) ** 0.5, rel=0.1)


def test_tv_sobel_and_classifier_head():
    model = build_model("tv:resnet18", in_channels=3, input_size=32, sobel=True)
    assert model.features.conv1.in_channels == 2
    assert model.embed(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    mobile = build_model("tv:mobilenet_v3_small", in_channels=1, input_size=32)
    assert mobile.feature_dim == 1024
    assert mobile.default_probe_layer == "features"
    assert mobile.embed(torch.randn(2, 1, 32, 32)).shape == (2, 1024)


def test_tv_without_final_linear():
    with pytest.raises(ConfigError, match="no final Linear"):
        build_model("tv:squeezenet1_1", in_channels=3, input_size=64)
