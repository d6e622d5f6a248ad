"""Fixed Sobel front of DeepCluster (Caron et al., 2018).

Caron's code feeds the network image gradients rather than colours, so that k-means cannot
group images by colour alone: a 1×1 convolution averages the RGB channels (weights 1/3 each),
then a 3×3 convolution with the horizontal and vertical Sobel kernels yields 2 channels.
Grayscale input skips the averaging. Neither convolution is trained.
"""

from __future__ import annotations

import torch
from torch import nn

from deepcluster.core.errors import ConfigError

__all__ = ["Sobel", "SOBEL_CHANNELS"]

#: Number of channels the Sobel front outputs (the first conv of the body takes this many).
SOBEL_CHANNELS = 2

_SOBEL_X = [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]


def _fixed_conv(in_channels: int, out_channels: int, kernel_size: int, padding: int) -> nn.Conv2d:
    # Built on the meta device so that constructing a fixed layer never consumes the global RNG.
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, device="meta").to_empty(
        device="cpu"
    )


class Sobel(nn.Sequential):
    """Fixed grayscale + Sobel filter: (B, C, H, W) → (B, 2, H, W), C ∈ {1, 3}.

    Child 0 is the grayscale conv (3 → 1, weights 1/3, bias 0) or an identity for 1-channel input;
    child 1 is the Sobel conv (1 → 2, 3×3, zero padding 1, bias 0). The keys ``0.*``/``1.*`` match
    the ``sobel`` of the official checkpoints. All parameters have ``requires_grad=False``.
    As in Caron's code the padding is zeros, so a constant image gives 0 except on its border.

    Parameters
    ----------
    in_channels : int
        Channels of the input images, 1 or 3.
    """

    def __init__(self, in_channels: int = 3) -> None:
        if in_channels == 3:
            gray: nn.Module = _fixed_conv(3, 1, 1, 0)
            with torch.no_grad():
                gray.weight.fill_(1.0 / 3.0)
                gray.bias.zero_()
        elif in_channels == 1:
            gray = nn.Identity()
        else:
            raise ConfigError(
                f"the Sobel front needs 1- or 3-channel images, got {in_channels} channels; "
                "set sobel: false or convert the images"
            )
        edges = _fixed_conv(1, SOBEL_CHANNELS, 3, 1)
        with torch.no_grad():
            kx = torch.tensor(_SOBEL_X)
            edges.weight[0, 0].copy_(kx)
            edges.weight[1, 0].copy_(kx.t())
            edges.bias.zero_()
        super().__init__(gray, edges)
        self.in_channels = in_channels
        self.out_channels = SOBEL_CHANNELS
        self.requires_grad_(False)
