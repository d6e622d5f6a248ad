"""Shapes of forward / embed / layer_outputs for every builtin architecture."""

import copy

import pytest
import torch

from deepcluster.core.errors import ConfigError
from deepcluster.models import DeepClusterNet, build_model
from deepcluster.models.base import InputTooSmallError, feature_output_shape

# arch, in_channels, input_size, feature_dim, {probe: dim}, default probe
CASES = [
    ("lenet5", 1, 28, 84, {"conv1": 6 * 14 * 14, "conv2": 400, "fc1": 120, "fc2": 84}, "conv2"),
    ("lenet5", 3, 32, 84, {"conv1": 6 * 14 * 14, "conv2": 400, "fc1": 120, "fc2": 84}, "conv2"),
    ("tiny_cnn", 1, 28, 32, {"conv1": 16 * 14 * 14, "conv2": 32 * 7 * 7, "fc1": 64, "fc2": 32}, "conv2"),
    (
        "small_alexnet", 3, 32, 512,
        {"conv1": 48 * 16 * 16, "conv2": 126 * 8 * 8, "conv3": 192 * 8 * 8, "conv4": 192 * 8 * 8,
         "conv5": 128 * 4 * 4, "fc1": 512, "fc2": 512},
        "conv5",
    ),
    (
        "alexnet", 3, 224, 4096,
        {"conv1": 96 * 27 * 27, "conv2": 256 * 13 * 13, "conv3": 384 * 13 * 13, "conv4": 384 * 13 * 13,
         "conv5": 256 * 6 * 6, "fc1": 4096, "fc2": 4096},
        "conv5",
    ),
    (
        "vgg16", 3, 224, 4096,
        {"conv1": 64 * 112 * 112, "conv2": 128 * 56 * 56, "conv3": 256 * 28 * 28, "conv4": 512 * 14 * 14,
         "conv5": 512 * 7 * 7, "fc1": 4096, "fc2": 4096},
        "conv5",
    ),
]


@pytest.mark.parametrize(
    "arch,in_channels,size,dim,probes,default", CASES, ids=[f"{c[0]}-{c[2]}px" for c in CASES]
)
def test_shapes(arch, in_channels, size, dim, probes, default):
    model = build_model(arch, in_channels=in_channels, input_size=size, num_classes=7).eval()
    # Big nets forward a single image; BatchNorm1d needs eval mode for that.
    batch = 2 if size <= 32 else 1
    x = torch.randn(batch, in_channels, size, size)
    assert isinstance(model, DeepClusterNet)
    assert model.arch == arch
    assert model.feature_dim == dim
    assert model.default_probe_layer == default
    assert list(model.probe_layers()) == list(probes)
    with torch.no_grad():
        emb = model.embed(x)
        out = model(x)
        outs = model.layer_outputs(x, list(probes))
    assert emb.shape == (batch, dim)
    assert out.shape == (batch, 7)
    torch.testing.assert_close(out, model.top_layer(torch.relu(emb)))
    assert {k: tuple(v.shape) for k, v in outs.items()} == {k: (batch, d) for k, d in probes.items()}
    # The last fc probe is the clustering feature (pre-ReLU); the earlier one is post-ReLU.
    last_fc = list(probes)[-1]
    torch.testing.assert_close(outs[last_fc], emb)
    assert (outs["fc1"] >= 0).all()
    assert (outs[default] >= 0).all()


def test_top_layer_none_returns_post_relu_features():
    model = build_model("lenet5", num_classes=None)
    assert model.top_layer is None
    x = torch.randn(4, 1, 28, 28)
    out = model(x)
    assert out.shape == (4, 84)
    torch.testing.assert_close(out, torch.relu(model.embed(x)))
    assert (model.embed(x) < 0).any()  # pre-ReLU features do go negative


def test_vgg16_small_input_and_train_mode_backward():
    model = build_model("vgg16", in_channels=3, input_size=32, num_classes=5)
    assert model.classifier[0].in_features == 512
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert model.features[0].weight.grad is not None


@pytest.mark.parametrize("arch,size", [("lenet5", 28), ("small_alexnet", 32), ("tiny_cnn", 28)])
def test_sobel_body_takes_two_channels(arch, size):
    for c in (1, 3):
        model = build_model(arch, in_channels=c, input_size=size, sobel=True)
        assert model.sobel is not None
        assert model.features[0].in_channels == 2
        assert model.embed(torch.randn(2, c, size, size)).shape == (2, model.feature_dim)


def test_lenet_sizes_above_28():
    for size in (28, 30, 32, 40, 64):
        model = build_model("lenet5", input_size=size)
        assert model.embed(torch.randn(2, 1, size, size)).shape == (2, 84)


def test_layer_outputs_stops_early_and_keeps_order():
    model = build_model("lenet5").eval()
    calls = []
    model.classifier.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(3, 1, 28, 28)
    outs = model.layer_outputs(x, ["conv2", "conv1"])
    assert list(outs) == ["conv2", "conv1"]
    assert calls == []  # the classifier never ran
    # No hook is left behind.
    assert all(not m._forward_hooks for m in model.probe_layers().values())
    model.embed(x)
    assert calls == [1]


def test_layer_outputs_unknown_name():
    model = build_model("tiny_cnn")
    with pytest.raises(ConfigError, match="conv9"):
        model.layer_outputs(torch.randn(2, 1, 28, 28), ["conv9"])


def test_layer_outputs_not_altered_by_inplace_relu():
    model = build_model("lenet5").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        fc1 = model.layer_outputs(x, ["fc1"])["fc1"]
        h = model.classifier[:3](torch.flatten(model.features(x), 1))
    torch.testing.assert_close(fc1, h)


def test_deepcopy_keeps_probe_layers_inside_the_copy():
    model = build_model("tiny_cnn")
    clone = copy.deepcopy(model)
    ids = {id(m) for m in clone.modules()}
    assert all(id(m) in ids for m in clone.probe_layers().values())
    x = torch.randn(2, 1, 28, 28)
    clone.eval(), model.eval()
    torch.testing.assert_close(clone.layer_outputs(x, ["fc2"])["fc2"], model.embed(x))


def test_state_dict_keys_follow_official_layout():
    model = build_model("alexnet", in_channels=3, input_size=63, sobel=True, num_classes=3)
    keys = set(model.state_dict())
    for key in ("sobel.0.weight", "sobel.1.weight", "features.0.weight", "features.1.running_mean",
                "classifier.1.weight", "classifier.4.weight", "top_layer.weight", "top_layer.bias"):
        assert key in keys


@pytest.mark.parametrize("arch,channels,sizes", [
    ("lenet5", 1, [12, 28, 31, 32, 45]),
    ("tiny_cnn", 2, [4, 7, 28, 33]),
    ("small_alexnet", 3, [8, 15, 32, 37]),
    ("alexnet", 3, [63, 64, 99, 130]),
    ("vgg16", 3, [32, 47, 64]),
])
def test_shape_arithmetic_matches_meta_and_real_forward(arch, channels, sizes):
    for size in sizes:
        features = build_model(arch, in_channels=channels, input_size=size).features.eval()
        arithmetic = feature_output_shape(features, channels, size)
        meta = feature_output_shape(torch.nn.Sequential(features), channels, size)  # not a plain stack
        with torch.no_grad():
            real = features(torch.zeros(2, channels, size, size)).shape
        assert arithmetic == meta == real, (arch, size)


def test_shape_arithmetic_too_small():
    features = build_model("vgg16", in_channels=3, input_size=32).features
    with pytest.raises(InputTooSmallError):
        feature_output_shape(features, 3, 31)
    with pytest.raises(InputTooSmallError):
        feature_output_shape(torch.nn.Sequential(features), 3, 31)
