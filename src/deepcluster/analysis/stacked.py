"""Features of many randomly initialised networks in one pass over the data.

Initial Alignment needs the features of the whole dataset under tens or hundreds of random
initialisations of the same architecture. Running them one at a time repeats the same small
convolutions (few channels, memory-bound on a CPU) over and over. Stacking B networks side by
side turns them into one wide network:

- the first convolution sees the same input for every network, so its weights are concatenated
  along the output channels: one im2col, one GEMM with B times more columns;
- later convolutions become grouped convolutions (``groups = B``), one group per network;
- eval-mode BatchNorm is folded into the convolution or linear layer before it (exact algebra,
  only rounding differs);
- ReLU followed by max-pooling is applied after the pooling (max and ReLU commute), on a
  tensor four times smaller, and 2×2 pooling of channels-last tensors uses two elementwise
  maxima instead of ``max_pool2d_with_indices``;
- linear layers become one batched matrix product.

Only plain ``Sequential`` bodies (Conv2d, BatchNorm, ReLU, MaxPool2d, AvgPool2d, Dropout,
Identity, Linear) can be stacked; :func:`can_stack` says whether a model qualifies, and callers
fall back to one network at a time otherwise (torchvision backbones).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcluster.core.precision import FP32, Precision, cpu_has_amx
from deepcluster.core.progress import progress_bar
from deepcluster.data.transforms import normalize
from deepcluster.models.base import DeepClusterNet

__all__ = ["NotStackable", "StackedNet", "can_stack", "stacked_embed"]

_PASS = (nn.Dropout, nn.Identity)


class NotStackable(ValueError):
    """The architecture contains a layer the stacked forward does not implement."""


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    shape = (-1,) + (1,) * (weight.dim() - 1)
    b = shift if bias is None else bias * scale + shift
    return weight * scale.reshape(shape), b


def _pool2x2(x: torch.Tensor) -> torch.Tensor:
    # 2×2/stride-2 max pooling as two elementwise maxima over strided views: on a CPU this is
    # 2-3× faster than max_pool2d, which also computes indices. Output is channels-last.
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):
        v = x.permute(0, 2, 3, 1).reshape(n * (h // 2), 2, w // 2, 2 * c)
        r = torch.maximum(v[:, 0], v[:, 1]).reshape(n * (h // 2), w // 2, 2, c)
        return torch.maximum(r[:, :, 0], r[:, :, 1]).reshape(n, h // 2, w // 2, c).permute(0, 3, 1, 2)
    v = x.contiguous().reshape(n * c * (h // 2), 2, w)
    r = torch.maximum(v[:, 0], v[:, 1]).reshape(-1, w // 2, 2)
    out = torch.maximum(r[..., 0], r[..., 1]).reshape(n, c, h // 2, w // 2)
    return out.contiguous(memory_format=torch.channels_last)


def _is_pool2x2(m: nn.MaxPool2d) -> bool:
    def one(v):
        return v if isinstance(v, int) else (v[0] if v[0] == v[1] else -1)

    stride = m.stride if m.stride is not None else m.kernel_size
    return (one(m.kernel_size) == 2 and one(stride) == 2 and one(m.padding) == 0 and one(m.dilation) == 1
            and not m.ceil_mode and not m.return_indices)


def _maxpool(m: nn.MaxPool2d) -> Callable[[torch.Tensor], torch.Tensor]:
    fast = _is_pool2x2(m)

    def pool(x: torch.Tensor) -> torch.Tensor:
        if fast and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0:
            return _pool2x2(x)
        return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)

    return pool


def _relu(x: torch.Tensor) -> torch.Tensor:
    return x.relu_()


def _relu_max_bf16(*parts: torch.Tensor) -> torch.Tensor:
    """``relu(max(parts))`` of bf16 tensors, from their bits read as int16: positive bf16 numbers
    order as their bits do and every negative one reads as a negative int16, so the int16 maximum
    clamped at 0 is the bf16 answer, bit for bit (but for a -0.0 maximum, which comes out +0.0).
    ~3.7x faster than torch's bf16 maximum on the CPU, which converts each element to float."""
    ints = [p.view(torch.int16) for p in parts]
    out = torch.maximum(ints[0], ints[1])
    for more in ints[2:]:
        torch.maximum(out, more, out=out)
    return out.clamp_min_(0).view(torch.bfloat16)


def _relu_pool2x2_bf16(x: torch.Tensor) -> torch.Tensor:
    """``maxpool2x2(relu(x))`` of a bf16 tensor (see :func:`_relu_max_bf16`); channels-last out."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        return F.max_pool2d(x, 2, 2).relu_()
    return _pool2x2(x.view(torch.int16)).clamp_min_(0).view(torch.bfloat16)


class StackedNet:
    """B networks of one architecture evaluated as one wide network (inference only).

    Parameters
    ----------
    models : sequence of DeepClusterNet
        Networks with identical architecture (different weights). They are read, not modified.

    Raises
    ------
    NotStackable
        When the architecture has a layer the stacked forward does not implement.
    """

    def __init__(self, models: Sequence[DeepClusterNet], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if not models:
            raise ValueError("no models to stack")
        self.n_models = len(models)
        self.device = torch.device(device)
        self.dtype = dtype
        # the Sobel front is fixed (not learned): identical in every network, applied once
        self.sobel = None if models[0].sobel is None else models[0].sobel.to(self.device)
        with torch.no_grad():
            self.conv_ops, stacked = self._conv_ops([m.features for m in models])
            if not stacked:
                raise NotStackable("the conv body has no convolution to stack")
            self.fc_ops = self._fc_ops([m.classifier for m in models])

    # -- building ------------------------------------------------------------------------------
    def _conv_ops(self, bodies: list[nn.Module]) -> tuple[list[Callable], bool]:
        if not all(isinstance(b, nn.Sequential) for b in bodies):
            raise NotStackable(f"features is a {type(bodies[0]).__name__}, not a plain Sequential")
        layers = list(zip(*[list(b) for b in bodies]))
        B = self.n_models
        ops: list[Callable] = []
        stacked = False
        i = 0
        while i < len(layers):
            group = layers[i]
            layer = group[0]
            nxt = layers[i + 1][0] if i + 1 < len(layers) else None
            if type(layer) is nn.Conv2d:
                if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
                    raise NotStackable("convolutions with string or non-zero padding modes")
                if not stacked and layer.groups != 1:
                    raise NotStackable("a grouped first convolution")
                w = [c.weight for c in group]
                b = [c.bias if c.bias is not None else c.weight.new_zeros(c.out_channels) for c in group]
                if isinstance(nxt, nn.BatchNorm2d):
                    folded = [_fold_bn(wi, bi, bn) for wi, bi, bn in zip(w, b, layers[i + 1])]
                    w, b = [f[0] for f in folded], [f[1] for f in folded]
                    i += 1
                weight = torch.cat(w).to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
                bias = torch.cat(b).to(self.device, self.dtype)
                after = [g[0] for g in layers[i + 1 : i + 3]]
                if (not stacked and self.dtype == torch.bfloat16 and _gemm_friendly(layer) and len(after) == 2
                        and isinstance(after[0], nn.ReLU) and isinstance(after[1], nn.MaxPool2d)
                        and _is_pool2x2(after[1])):
                    # bf16: the first conv + ReLU + 2×2 max-pool as one GEMM per pooling offset
                    ops.append(_first_conv_relu_pool(weight, bias, layer.padding))
                    i += 2
                else:
                    groups = layer.groups * B if stacked else 1
                    ops.append(_conv(weight, bias, layer.stride, layer.padding, layer.dilation, groups))
                stacked = True
            elif isinstance(layer, nn.BatchNorm2d):
                if not stacked:
                    raise NotStackable("BatchNorm before the first convolution")
                scale, shift = zip(*[_fold_bn(bn.running_var.new_ones(bn.num_features), None, bn) for bn in group])
                ops.append(_affine(torch.cat(scale).to(self.device, self.dtype), torch.cat(shift).to(self.device, self.dtype)))
            elif isinstance(layer, nn.ReLU):
                if isinstance(nxt, nn.MaxPool2d) and self.dtype == torch.bfloat16 and _is_pool2x2(nxt):
                    ops.append(_relu_pool2x2_bf16)
                    i += 1
                elif isinstance(nxt, nn.MaxPool2d):  # pool first: max and ReLU commute
                    ops.extend([_maxpool(nxt), _relu])
                    i += 1
                else:
                    ops.append(_relu)
            elif isinstance(layer, nn.MaxPool2d):
                ops.append(_maxpool(layer))
            elif isinstance(layer, nn.AvgPool2d):
                ops.append(lambda x, m=layer: F.avg_pool2d(x, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                                         m.count_include_pad, m.divisor_override))
            elif isinstance(layer, _PASS):
                pass
            else:
                raise NotStackable(f"layer {type(layer).__name__} in the conv body")
            i += 1
        return ops, stacked

    def _fc_ops(self, heads: list[nn.Module]) -> list[Callable]:
        if not all(isinstance(h, nn.Sequential) for h in heads):
            raise NotStackable(f"classifier is a {type(heads[0]).__name__}, not a plain Sequential")
        layers = list(zip(*[list(h) for h in heads]))
        ops: list[Callable] = []
        i = 0
        while i < len(layers):
            group = layers[i]
            layer = group[0]
            nxt = layers[i + 1][0] if i + 1 < len(layers) else None
            if type(layer) is nn.Linear:
                w = [m.weight for m in group]
                b = [m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in group]
                if isinstance(nxt, nn.BatchNorm1d):
                    folded = [_fold_bn(wi, bi, bn) for wi, bi, bn in zip(w, b, layers[i + 1])]
                    w, b = [f[0] for f in folded], [f[1] for f in folded]
                    i += 1
                weight_t = torch.stack(w).transpose(1, 2).contiguous().to(self.device, self.dtype)  # B × in × out
                bias = torch.stack(b).unsqueeze(1).to(self.device, self.dtype)  # B × 1 × out
                ops.append(lambda h, wt=weight_t, bb=bias: torch.baddbmm(bb, h, wt))
            elif isinstance(layer, nn.BatchNorm1d):
                scale, shift = zip(*[_fold_bn(bn.running_var.new_ones(bn.num_features), None, bn) for bn in group])
                s = torch.stack(scale).unsqueeze(1).to(self.device, self.dtype)
                t = torch.stack(shift).unsqueeze(1).to(self.device, self.dtype)
                ops.append(lambda h, s=s, t=t: torch.addcmul(t, h, s))
            elif isinstance(layer, nn.ReLU):
                ops.append(_relu)
            elif isinstance(layer, _PASS):
                pass
            else:
                raise NotStackable(f"layer {type(layer).__name__} in the classifier")
            i += 1
        return ops

    # -- forward -------------------------------------------------------------------------------
    @torch.no_grad()
    def trunk(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Flattened conv-body outputs of a batch ``x`` (n×C×H×W, normalised): B × n × F,
        written into ``out`` (B × n × F) when given."""
        if self.sobel is not None:
            x = self.sobel(x)
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        for op in self.conv_ops:
            x = op(x)
        n, bc, h, w = x.shape
        # per-network flatten in (C, H, W) order, as torch.flatten of the single network does:
        # one copy from the channels-last activations, straight into ``out``
        per_net = x.unflatten(1, (self.n_models, bc // self.n_models)).transpose(0, 1)  # B, n, c, h, w
        if out is None:
            return per_net.reshape(self.n_models, n, -1)
        out.view(per_net.shape).copy_(per_net)
        return out

    @torch.no_grad()
    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier part on B × n × F trunk outputs: B × n × d."""
        x = x.contiguous()
        for op in self.fc_ops:
            x = op(x)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of a batch ``x`` (n×C×H×W, normalised) for every network: B × n × d."""
        return self.head(self.trunk(x))


def _conv(weight, bias, stride, padding, dilation, groups):
    def conv(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    return conv


def _gemm_friendly(conv: nn.Conv2d) -> bool:
    return (conv.groups == 1 and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1)
            and not isinstance(conv.padding, str))


def _k_pad(k: int, device: torch.device) -> int:
    """The GEMM depth ``k`` padded for the bf16 kernels: blocks of 32 on AMX tiles, of 8 for a
    GPU's tensor cores, pairs with AVX-512 BF16 alone (padding to 32 there costs 17% more time
    on K = 26, for the same bits)."""
    block = 8 if device.type == "cuda" else 32 if cpu_has_amx() else 2
    return -(-k // block) * block


def _first_conv_relu_pool(weight: torch.Tensor, bias: torch.Tensor, padding: tuple[int, int]):
    """``maxpool2x2(relu(conv(x)))`` of the (stacked) first convolution as four GEMMs on the image
    patches, one per position in the pooling window, reduced by elementwise maxima. With few
    input channels a direct convolution is memory-bound on its wide output; here that output is
    only ever held a batch at a time and pooled at once. Falls back to conv + pool on odd sizes."""
    out_ch, in_ch, kh, kw = weight.shape
    ph, pw = padding
    k = in_ch * kh * kw
    k_pad = _k_pad(k + 1, weight.device)  # + 1: the bias column
    wm = weight.new_zeros(k_pad, out_ch)
    wm[:k] = weight.reshape(out_ch, k).t()  # rows in (c, i, j) order
    wm[k] = bias  # against a column of ones: the bias is added in the GEMM's fp32 accumulation
    conv = _conv(weight, bias, (1, 1), padding, (1, 1), 1)
    local = threading.local()  # each worker thread's patch and product buffers, kept between batches

    def buffers(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (rows, x.dtype, x.device)
        if getattr(local, "key", None) != key:
            cols = x.new_empty(k_pad, 4 * rows)  # the patches as columns: the GEMM reads it transposed
            cols[k].fill_(1)  # the ones and the zero padding are written once
            cols[k + 1 :].zero_()
            local.key, local.cols, local.y = key, cols, x.new_empty(4 * rows, out_ch)
        return local.cols, local.y

    def op(x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
        if ho % 2 or wo % 2:
            return _pool2x2_or_max(conv(x)).relu_()
        rows = n * (ho // 2) * (wo // 2)
        cols, y = buffers(x, rows)
        # cols[(c, i, j), (di, dj, m, y, x)] = padded[m, c, 2y + di + i, 2x + dj + j]: one strided
        # view of the padded images, copied in runs along x (3x faster than rows of kh x kw patches)
        xp = F.pad(x, (pw, pw, ph, ph))
        sn, sc, sh, sw = xp.stride()
        patches = xp.as_strided((in_ch, kh, kw, 2, 2, n, ho // 2, wo // 2), (sc, sh, sw, sh, sw, sn, 2 * sh, 2 * sw))
        cols[:k].view(patches.shape).copy_(patches)
        torch.mm(cols.t(), wm, out=y)  # one row block per pool offset
        y4 = y.view(4, rows, out_ch)
        pooled = _relu_max_bf16(y4[0], y4[1], y4[2], y4[3])  # max and ReLU commute
        return pooled.view(n, ho // 2, wo // 2, out_ch).permute(0, 3, 1, 2)  # channels-last

    return op


def _pool2x2_or_max(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2, 2)


def _affine(scale, shift):
    s, t = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)

    def affine(x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(t, x, s)

    return affine


def can_stack(model: nn.Module) -> bool:
    """Whether :class:`StackedNet` implements ``model``'s architecture."""
    if not isinstance(model, DeepClusterNet):
        return False
    try:
        StackedNet([model])
    except NotStackable:
        return False
    return True


def _activation_sizes(model: DeepClusterNet, in_channels: int, size: int) -> tuple[int, int]:
    """Elements per image of the largest conv activation (it sets the image batch, so that one
    batch of B networks' activations fits the device's budget: :func:`_batch_size`) and of the
    conv body's output (the classifier's input)."""
    largest = in_channels * size * size
    ref = next(model.parameters(), None)
    x = torch.zeros(1, in_channels, size, size, device=ref.device if ref is not None else "cpu")
    with torch.no_grad():
        if model.sobel is not None:
            x = model.sobel(x)
        for layer in model.features:
            x = layer(x)
            largest = max(largest, x.numel())
    return largest, x.numel()


def _batch_size(per_image: float, device: torch.device) -> int:
    """Images per stacked forward: on a CPU, activations of about 8 MB (they stay in cache, 8 to
    1,024 images); on a GPU, an eighth of its free memory (8 to 4,096 images)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(8, min(4096, free / 8 // per_image)))
    return int(max(8, min(1024, 8e6 // per_image)))


@torch.no_grad()
def stacked_embed(
    models: Sequence[DeepClusterNet],
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    show_progress: bool = True,
    description: str = "features",
    precision: Precision = FP32,
) -> np.ndarray:
    """Clustering features (``embed``) of uint8 ``images`` for every model: B × N × d, float32.

    Equals ``extract_features(model, images, mean, std)["embed"]`` for each model up to float
    rounding (BatchNorm is folded, sums are reordered).

    Parameters
    ----------
    models : sequence of DeepClusterNet
        Networks of one stackable architecture (see :func:`can_stack`).
    images : torch.Tensor
        uint8 images, N×C×H×W.
    mean, std : sequence of float
        Per-channel normalisation, as in training.
    device : torch.device or str
        Where to compute.
    batch_size : int or None
        Images per forward; ``None`` sizes it per device: on a CPU one batch's activations take
        about 8 MB (cache-sized), on a GPU an eighth of its free memory.
    precision : Precision
        bf16 runs the stacked network's weights and activations in bf16 (features come out float32).
    """
    device = torch.device(device)
    models = [m.eval() for m in models]
    net = StackedNet(models, device, dtype=precision.dtype)
    largest, trunk_dim = _activation_sizes(models[0], int(images.shape[1]), int(images.shape[-1]))
    if batch_size is None:
        batch_size = _batch_size(largest * len(models) * 4, device)
    out = np.empty((len(models), len(images), models[0].feature_dim), dtype=np.float32)
    # The convolutions want small batches (activations in cache); the batched matrix products
    # of the classifier want large ones: trunk outputs are gathered over ``head_rows`` images.
    head_rows = max(batch_size, 2048)

    out_t = torch.from_numpy(out) if device.type == "cpu" else None  # the CPU's features go straight into ``out``

    def run(lo: int, hi: int, advance) -> None:
        gathered = torch.empty((len(models), min(head_rows, hi - lo), trunk_dim), dtype=precision.dtype, device=device)
        for chunk in range(lo, hi, head_rows):
            stop = min(chunk + head_rows, hi)
            for start in range(chunk, stop, batch_size):
                batch = normalize(images[start : min(start + batch_size, stop)].to(device), mean, std)
                net.trunk(batch, out=gathered[:, start - chunk : start - chunk + len(batch)])
                advance(len(batch))
            feats = net.head(gathered[:, : stop - chunk])
            if out_t is not None:
                out_t[:, chunk:stop].copy_(feats)
            else:
                out[:, chunk:stop] = feats.float().cpu().numpy()

    # On a CPU these ops are too small for intra-op threads to pay off: one single-threaded
    # worker per thread, each on its own share of the images, is about 20% faster.
    threads = torch.get_num_threads()
    workers = threads if device.type == "cpu" and threads > 1 and len(images) >= 4 * head_rows else 1
    with progress_bar(description, total=len(images), enabled=show_progress) as advance:
        if workers == 1:
            run(0, len(images), advance)
        else:
            bounds = np.linspace(0, len(images), workers + 1).astype(int)
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(workers) as pool:
                    for f in [pool.submit(run, int(a), int(b), advance) for a, b in itertools.pairwise(bounds)]:
                        f.result()
            finally:
                torch.set_num_threads(threads)
    return out
