"""Report figures, model side: first-layer filters, top activating images, gradient ascent."""

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.data.transforms import normalize
from deepcluster.models import build_model
from deepcluster.report.activations import (
    plot_top_activations,
    top_activating,
    unit_scores,
)
from deepcluster.report.filters import first_conv, first_layer_filters, plot_filters
from deepcluster.report.gradient_ascent import (
    channel_activation,
    gaussian_blur,
    plot_channel_visualizations,
    visualize_channels,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GREY = ((0.5,), (0.25,))
RGB = ((0.5, 0.45, 0.4), (0.25, 0.25, 0.25))


def assert_png(path: Path, max_kb: int = 200) -> np.ndarray:
    path = Path(path)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 1_000 < len(data) < max_kb * 1024, f"{path.name}: {len(data)} bytes"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 30
    assert pixels.std() > 0.01
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))
    return pixels


@pytest.fixture(scope="module")
def lenet():
    return build_model("lenet5", in_channels=1, input_size=28, sobel=False, num_classes=None, seed=0)


@pytest.fixture(scope="module")
def alexnet_sobel():
    return build_model("small_alexnet", in_channels=3, input_size=32, sobel=True, num_classes=None, seed=0)


@pytest.fixture(scope="module")
def grey_images():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (40, 1, 28, 28), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def rgb_images():
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 256, (30, 3, 32, 32), generator=g, dtype=torch.uint8)


# --------------------------------------------------------------------------------------- filters


def test_filters_without_sobel_are_the_first_conv_weights(lenet):
    f = first_layer_filters(lenet)
    assert f.shape == (6, 1, 5, 5) and f.dtype == torch.float32
    torch.testing.assert_close(f, lenet.features[0].weight.detach())


@pytest.mark.parametrize("in_channels", [3, 1])
def test_sobel_composition_equals_conv_of_sobel(in_channels):
    model = build_model("small_alexnet", in_channels=in_channels, input_size=32, sobel=True, seed=0)
    conv = first_conv(model)
    composed = first_layer_filters(model)
    assert composed.shape == (48, in_channels, 5, 5)
    x = torch.randn(2, in_channels, 20, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = F.conv2d(model.sobel(x), conv.weight, stride=conv.stride, padding=conv.padding)
        got = F.conv2d(x, composed, stride=conv.stride, padding=conv.padding[0] + 1)
    assert got.shape == ref.shape
    m = conv.padding[0] + 1  # outputs whose receptive field touches the padded border differ
    torch.testing.assert_close(got[..., m:-m, m:-m], ref[..., m:-m, m:-m], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, ref, atol=1e-4)  # the border does differ: the crop is needed


def test_sobel_composition_with_stride_and_dilation():
    model = build_model("small_alexnet", in_channels=3, input_size=32, sobel=True, seed=0)
    conv = model.features[0]
    conv.stride, conv.dilation, conv.padding = (2, 2), (2, 2), (0, 0)
    composed = first_layer_filters(model)
    assert composed.shape[-2:] == (7, 7)  # dilated 3×3 → 5×5, plus the Sobel 2
    x = torch.randn(1, 3, 21, 21, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = conv(model.sobel(x)) - conv.bias.view(1, -1, 1, 1)
        got = F.conv2d(x, composed, stride=2, padding=1)
    torch.testing.assert_close(got[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)


def test_plot_filters_for_both_models(tmp_path, lenet, alexnet_sobel):
    assert_png(plot_filters(first_layer_filters(lenet), tmp_path / "lenet.png", title="lenet5"))
    composed = first_layer_filters(alexnet_sobel)
    torch.testing.assert_close(composed[:, 0], composed[:, 2])  # grey front: the same on R, G, B
    px = assert_png(plot_filters(composed, tmp_path / "sub" / "alex.png"))
    assert np.abs(px[..., 0] - px[..., 1]).max() < 0.02  # so drawn in grey
    px = assert_png(plot_filters(torch.randn(8, 3, 5, 5), tmp_path / "rgb.png"))
    assert np.abs(px[..., 0] - px[..., 1]).max() > 0.05  # RGB filters are drawn in colour
    assert_png(plot_filters(torch.randn(10, 2, 3, 3), tmp_path / "two.png", max_filters=4))
    with pytest.raises(DataError):
        plot_filters(np.zeros((3, 3)), tmp_path / "bad.png")


# ----------------------------------------------------------------------------------- activations


def _brute_force(model, images, stats, layer, units, n):
    model.eval()
    with torch.no_grad():
        out = model.layer_outputs(normalize(images, *stats), [layer], flatten=False)[layer]
    scores = unit_scores(out)[:, units].numpy().T  # (U, N)
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return idx, np.take_along_axis(scores, idx, axis=1)


@pytest.mark.parametrize("layer", ["conv1", "conv2", "fc1", "fc2"])
def test_top_activating_matches_brute_force(lenet, grey_images, layer):
    units = [0, 3, 5]
    lenet.train()
    idx, vals = top_activating(lenet, grey_images, *GREY, layer, units=units, n=7, batch_size=6)
    assert lenet.training  # mode restored
    ref_idx, ref_vals = _brute_force(lenet, grey_images, GREY, layer, units, 7)
    assert idx.shape == vals.shape == (3, 7) and idx.dtype == np.int64 and vals.dtype == np.float32
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(idx, ref_idx)


def test_top_activating_all_units_and_ties(lenet):
    # Identical images: every value ties, and the lowest indices must win, in order.
    images = torch.full((10, 1, 28, 28), 100, dtype=torch.uint8)
    idx, _vals = top_activating(lenet, images, *GREY, "conv1", n=4, batch_size=3)
    assert idx.shape == (6, 4)  # all 6 channels of conv1
    np.testing.assert_array_equal(idx, np.tile(np.arange(4), (6, 1)))
    idx, _ = top_activating(lenet, images[:2], *GREY, "fc1", units=[1], n=9)
    assert idx.shape == (1, 2)  # n is capped at N


def test_top_activating_planted_image_ranks_first(alexnet_sobel, rgb_images):
    # A Sobel net sees edges only: one image with a strong edge pattern among flat ones must top
    # every conv1 channel that responds to edges at all.
    images = torch.full((20, 3, 32, 32), 128, dtype=torch.uint8)
    images[13, :, :, ::2] = 255
    images[13, :, :, 1::2] = 0
    idx, vals = top_activating(alexnet_sobel, images, *RGB, "conv1", n=3, batch_size=8)
    responsive = vals[:, 0] > vals[:, 1] + 1e-6
    assert responsive.sum() >= 10
    assert np.all(idx[responsive, 0] == 13)


def test_top_activating_errors(lenet, grey_images):
    with pytest.raises(ConfigError, match="conv1.*conv2.*fc1.*fc2"):
        top_activating(lenet, grey_images, *GREY, "conv9")
    with pytest.raises(ConfigError, match="units"):
        top_activating(lenet, grey_images, *GREY, "conv1", units=[6])
    with pytest.raises(DataError):
        top_activating(lenet, grey_images[:0], *GREY, "conv1")


def test_plot_top_activations(tmp_path, alexnet_sobel, rgb_images, grey_images):
    idx, vals = top_activating(alexnet_sobel, rgb_images, *RGB, "conv2", units=[1, 4, 7], n=9)
    assert_png(plot_top_activations(rgb_images, idx, tmp_path / "top.png", values=vals, units=[1, 4, 7],
                                    title="conv2"))
    assert_png(plot_top_activations(grey_images, np.arange(18).reshape(6, 3), tmp_path / "grey.png", max_units=2))
    with pytest.raises(DataError, match="indices"):
        plot_top_activations(grey_images, np.array([[0, 99]]), tmp_path / "bad.png")
    with pytest.raises(DataError, match="units"):
        plot_top_activations(grey_images, np.array([[0, 1]]), tmp_path / "bad.png", units=[1, 2])


# ------------------------------------------------------------------------------- gradient ascent


def _activation(model, images01, stats, layer, channels):
    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in stats)
    model.eval()
    with torch.no_grad():
        return channel_activation(model, (torch.from_numpy(images01) - mean) / std, layer, channels).numpy()


@pytest.mark.parametrize(("model_name", "layer"), [("lenet", "conv2"), ("lenet", "fc1"), ("alexnet_sobel", "conv3")])
def test_gradient_ascent_increases_activation(request, model_name, layer):
    model = request.getfixturevalue(model_name)
    c, size = (1, 28) if model_name == "lenet" else (3, 32)
    stats = GREY if c == 1 else RGB
    channels = [0, 2, 5]
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = {"input_shape": (c, size, size), "mean": stats[0], "std": stats[1], "seed": 3}
    start = visualize_channels(model, layer, channels, steps=0, **kw)
    out = visualize_channels(model, layer, channels, steps=12, **kw)
    assert out.shape == (3, c, size, size) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    a0, a1 = _activation(model, start, stats, layer, channels), _activation(model, out, stats, layer, channels)
    assert np.all(a1 > a0 + 0.05), (a0, a1)
    # Model untouched: mode, requires_grad flags, weights, no gradients, ReLUs still in place.
    model.train()
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU))
    assert not any(m._forward_hooks for m in model.modules())


def test_gradient_ascent_is_deterministic(lenet):
    kw = {"input_shape": (1, 28, 28), "mean": GREY[0], "std": GREY[1], "steps": 6}
    a = visualize_channels(lenet, "conv1", [1, 4], seed=7, **kw)
    b = visualize_channels(lenet, "conv1", [1, 4], seed=7, **kw)
    c = visualize_channels(lenet, "conv1", [1, 4], seed=8, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_gradient_ascent_errors(lenet):
    kw = {"input_shape": (1, 28, 28), "mean": GREY[0], "std": GREY[1], "steps": 1}
    with pytest.raises(ConfigError, match="conv1.*conv2.*fc1.*fc2"):
        visualize_channels(lenet, "nope", [0], **kw)
    with pytest.raises(ConfigError, match="channels"):
        visualize_channels(lenet, "conv1", [6], **kw)
    with pytest.raises(ConfigError, match="mean and std"):
        visualize_channels(lenet, "conv1", [0], input_shape=(3, 28, 28), mean=GREY[0], std=GREY[1])
    assert all(m.inplace for m in lenet.modules() if isinstance(m, torch.nn.ReLU))


def test_gaussian_blur_keeps_constants_and_smooths():
    x = torch.full((1, 2, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(x, 0.5), x)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    y = gaussian_blur(spike, 1.0)
    assert y[0, 0, 4, 4] < 1 and y[0, 0, 4, 5] > 0 and abs(float(y.sum()) - 1) < 1e-5


def test_plot_channel_visualizations(tmp_path, alexnet_sobel):
    imgs = visualize_channels(alexnet_sobel, "conv2", list(range(10)), input_shape=(3, 32, 32), mean=RGB[0],
                              std=RGB[1], steps=3)
    assert_png(plot_channel_visualizations(imgs, tmp_path / "ascent.png", channels=list(range(10)), title="conv2"))
    grey = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    assert_png(plot_channel_visualizations(grey, tmp_path / "grey.png"))
    with pytest.raises(DataError):
        plot_channel_visualizations(grey, tmp_path / "bad.png", channels=[1])
