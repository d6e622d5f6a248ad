"""Initialisation statistics, seeding and the top layer."""

import math

import pytest
import torch
from torch import nn

from deepcluster.models import DeepClusterNet, available_models, build_model, init_weights, register_model


def test_conv_linear_bn_statistics():
    model = build_model("vgg16", in_channels=3, input_size=32, num_classes=10)
    conv = model.features[-4]  # 512 → 512, 3×3: 2.4 M draws
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == 512
    n = 3 * 3 * conv.out_channels
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / n), rel=0.1)
    assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2 / n)
    lin = model.classifier[-1]
    assert lin.weight.std().item() == pytest.approx(0.01, rel=0.1)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
            assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
            assert m.num_batches_tracked == 0


def test_init_weights_on_any_module_and_bn1d():
    net = nn.Sequential(nn.Conv2d(3, 64, 5), nn.BatchNorm1d(8), nn.Linear(1000, 500))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(5.0)
        net[1].running_mean.fill_(3.0)
    init_weights(net, torch.Generator().manual_seed(0))
    assert net[0].weight.std().item() == pytest.approx(math.sqrt(2 / (25 * 64)), rel=0.1)
    assert torch.all(net[0].bias == 0)
    assert torch.all(net[1].weight == 1) and torch.all(net[1].bias == 0)
    assert torch.all(net[1].running_mean == 0)
    assert net[2].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(net[2].bias == 0)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("arch,kwargs", [
    ("lenet5", {}),
    ("small_alexnet", {"in_channels": 3, "input_size": 32, "sobel": True}),
    ("tv:resnet18", {"in_channels": 1, "input_size": 32}),
])
def test_seed_reproducible_and_global_rng_untouched(arch, kwargs):
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = build_model(arch, seed=7, num_classes=5, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_model(arch, seed=7, num_classes=5, **kwargs)
    c = build_model(arch, seed=8, num_classes=5, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_seed_none_draws_from_global_rng():
    torch.manual_seed(0)
    a = build_model("tiny_cnn", seed=None)
    b = build_model("tiny_cnn", seed=None)
    assert not _same_weights(a, b)
    torch.manual_seed(0)
    assert _same_weights(a, build_model("tiny_cnn", seed=None))


class _WithLayerNorm(nn.Module):
    """Holds tensors init_weights does not set, so build_model must keep their default init."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.scale = nn.Parameter(torch.randn(4, 1, 1))

    def forward(self, x):
        return self.norm(self.conv(x)) * self.scale


_CUSTOM = "test_models_custom_layernorm"
if _CUSTOM not in available_models():

    @register_model(_CUSTOM)
    def _custom(in_channels: int, input_size: int) -> DeepClusterNet:
        body = nn.Sequential(_WithLayerNorm(in_channels), nn.AdaptiveAvgPool2d(2))
        return DeepClusterNet(
            body, nn.Sequential(nn.Linear(16, 8)), 8,
            probe_layers={"conv1": "features.0", "fc1": "classifier.0"}, default_probe_layer="conv1",
        )


def test_custom_model_with_other_tensors_is_seeded_and_sane():
    state = torch.get_rng_state()
    a = build_model(_CUSTOM, input_size=8, seed=3)
    b = build_model(_CUSTOM, input_size=8, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_weights(a, b)
    assert not _same_weights(a, build_model(_CUSTOM, input_size=8, seed=4))
    # Default init kept (not left as uninitialised memory).
    assert torch.all(a.features[0].norm.weight == 1)
    assert a.features[0].scale.abs().max() < 10
    assert a.embed(torch.randn(2, 1, 8, 8)).shape == (2, 8)


def test_reset_top_layer():
    model = build_model("small_alexnet", in_channels=3, input_size=32)
    state = torch.get_rng_state()
    layer = model.reset_top_layer(3000, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert model.top_layer is layer
    assert (layer.in_features, layer.out_features) == (512, 3000)
    assert layer.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.count_nonzero(layer.bias) == 0
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3000)
    again = model.reset_top_layer(3000, torch.Generator().manual_seed(0))
    assert torch.equal(again.weight, layer.weight)
    assert "top_layer.weight" in model.state_dict()


def test_reset_top_layer_follows_dtype():
    model = build_model("tiny_cnn").double()
    layer = model.reset_top_layer(4, torch.Generator().manual_seed(0))
    assert layer.weight.dtype == torch.float64
    assert model(torch.randn(2, 1, 28, 28, dtype=torch.float64)).shape == (2, 4)
