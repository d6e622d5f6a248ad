"""The fixed Sobel front."""

import pytest
import torch

from deepcluster.core.errors import ConfigError
from deepcluster.models import Sobel, build_model, init_weights


@pytest.mark.parametrize("c", [1, 3])
def test_output_channels_and_frozen(c):
    sobel = Sobel(c)
    assert sobel(torch.randn(2, c, 16, 16)).shape == (2, 2, 16, 16)
    assert all(not p.requires_grad for p in sobel.parameters())


@pytest.mark.parametrize("c", [1, 3])
def test_constant_image_gives_zero_inside(c):
    out = Sobel(c)(torch.full((1, c, 10, 10), 0.7))
    # Zero padding (as in Caron's code) makes the 1-px border respond; the inside must not.
    assert out[..., 1:-1, 1:-1].abs().max() < 1e-6
    assert out.abs().max() > 0


def test_kernels_and_grayscale():
    sobel = Sobel(3)
    assert torch.allclose(sobel[0].weight, torch.full((1, 3, 1, 1), 1 / 3))
    kx = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    assert torch.equal(sobel[1].weight[0, 0], kx)
    assert torch.equal(sobel[1].weight[1, 0], kx.t())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(sobel(x), Sobel(1)(x.mean(1, keepdim=True)))
    # A horizontal ramp has only a horizontal gradient.
    ramp = torch.arange(8.0).repeat(8, 1)[None, None]
    out = Sobel(1)(ramp)[..., 1:-1, 1:-1]
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], -8.0))
    assert torch.allclose(out[:, 1], torch.zeros_like(out[:, 1]))


def test_bad_channels():
    with pytest.raises(ConfigError):
        Sobel(4)
    with pytest.raises(ConfigError, match="Sobel"):
        build_model("lenet5", in_channels=4, sobel=True)


def test_model_sobel_untouched_by_init_and_training():
    model = build_model("tiny_cnn", in_channels=3, input_size=28, sobel=True, num_classes=4)
    before = {k: v.clone() for k, v in model.sobel.state_dict().items()}
    init_weights(model, torch.Generator().manual_seed(3))
    model(torch.randn(2, 3, 28, 28)).sum().backward()
    assert all(p.grad is None for p in model.sobel.parameters())
    for k, v in model.sobel.state_dict().items():
        assert torch.equal(v, before[k])
    assert torch.equal(model.sobel[1].weight, Sobel(3)[1].weight)
