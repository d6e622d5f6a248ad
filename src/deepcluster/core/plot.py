"""Shared matplotlib helpers of the report figures: Agg figures, atomic PNGs, image grids, colours.

Figures are built with :class:`matplotlib.figure.Figure` directly, never through ``pyplot``, so no
global figure state leaks between calls (nor between threads) and nothing needs closing.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from deepcluster.core.errors import DataError
from deepcluster.core.files import write_bytes

matplotlib.use("Agg")  # no display needed, and no GUI backend is ever picked up

DPI = 100
SAME = "#2ca02c"  # green frame: same label as the query / the cluster's majority
DIFFERENT = "#d62728"  # red frame: another label
QUERY = "#1f3a93"  # dark-blue frame of query images

Colour = str | tuple[float, ...]


def as_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array; torch tensors are detached and moved to the CPU first."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def new_figure(w: float, h: float, *, layout: str | None = "constrained") -> Figure:
    """A new Agg figure of ``w`` × ``h`` inches at :data:`DPI`, outside pyplot's global state.

    Parameters
    ----------
    w, h : float
        Width and height in inches (clipped to [1, 40]).
    layout : str or None
        Matplotlib layout engine: ``"constrained"`` (default), ``"tight"`` or None.

    Returns
    -------
    matplotlib.figure.Figure
    """
    return Figure(figsize=(float(np.clip(w, 1, 40)), float(np.clip(h, 1, 40))), dpi=DPI, layout=layout)


def save_png(fig: Figure, path: str | Path, *, dpi: int = DPI, max_bytes: int = 150_000) -> Path:
    """Render ``fig`` to PNG in memory and write it to ``path`` atomically.

    A PNG larger than ``max_bytes`` (photographs in image grids) is re-encoded with a 256-colour
    palette, which divides its size by about three at no visible cost.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure; it is not reused afterwards.
    path : str or Path
        Output file; parent folders are created.
    dpi : int
        Resolution (default 100, which keeps report figures small).
    max_bytes : int
        Size above which the palette encoding is tried (kept only when smaller).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05, facecolor="white")
    png = buf.getvalue()
    if len(png) > max_bytes:
        png = min(png, _palette_png(png), key=len)
    write_bytes(path, png)
    return path


def _palette_png(png: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        pal = im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def image_batch(images: Any) -> np.ndarray:
    """Validate N×C×H×W images (C = 1 or 3) and return them as numpy, without copying or converting.

    Figures index this batch first and convert only the images they show with :func:`to_display`.

    Raises
    ------
    DataError
        When the array is not N×C×H×W with C = 1 or 3.
    """
    x = as_numpy(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"images must be N×C×H×W with C = 1 or 3 channels, got shape {tuple(x.shape)}")
    return x


def to_display(images: Any) -> np.ndarray:
    """uint8 (or [0, 1] float) images N×C×H×W → float32 N×H×W×3 in [0, 1], ready for ``imshow``.

    A single image C×H×W gives H×W×3. One-channel (grey) images are repeated over RGB.

    Raises
    ------
    DataError
        When the array is not N×C×H×W (or C×H×W) with C = 1 or 3.
    """
    x = as_numpy(images)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"images must be N×C×H×W (or C×H×W) with C = 1 or 3 channels, got shape {tuple(x.shape)}")
    if x.dtype.kind == "f":
        x = np.clip(x.astype(np.float32), 0.0, 1.0)
    elif x.dtype.kind in "uib":
        x = np.clip(x, 0, 255).astype(np.float32) / 255.0
    else:
        raise DataError(f"images must be uint8 (or floats in [0, 1]), got dtype {x.dtype}")
    x = np.transpose(x, (0, 2, 3, 1))
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x[0] if single else x


def tile(images: np.ndarray, nrow: int, *, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile display images N×H×W×3 into one H'×W'×3 array, ``nrow`` images per row.

    Returns the canvas; image ``i`` lies at row ``i // nrow``, column ``i % nrow``, with ``pad``
    pixels of ``pad_value`` around every image.
    """
    n, h, w, c = images.shape
    nrow = max(1, min(nrow, max(n, 1)))
    rows = max(1, -(-n // nrow))
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y : y + h, x : x + w] = images[i]
    return canvas


def image_grid(
    ax: Axes,
    images: Any,
    nrow: int,
    *,
    pad: int | None = None,
    frames: Sequence[Colour | None] | None = None,
    frame_width: float = 2.0,
) -> np.ndarray:
    """Draw ``images`` as one tiled picture in ``ax``, ``nrow`` images per row (as torchvision's make_grid).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Target axes; its axis lines and ticks are switched off.
    images : array-like
        uint8 N×C×H×W images (C = 1 or 3), or display images N×H×W×3 from :func:`to_display`.
    nrow : int
        Images per row.
    pad : int, optional
        White pixels between images; default a tenth of the image size (at least 1), so that
        frames never touch.
    frames : sequence of colour or None, optional
        One entry per image: a frame drawn around it in that colour, or None for no frame.
    frame_width : float
        Frame line width in points.

    Returns
    -------
    numpy.ndarray
        The tiled canvas (H'×W'×3 floats).
    """
    imgs = as_numpy(images)
    if not (imgs.ndim == 4 and imgs.shape[-1] == 3 and imgs.dtype.kind == "f"):
        imgs = to_display(imgs)
    n, h, w, _ = imgs.shape
    if frames is not None and len(frames) != n:
        raise DataError(f"frames has {len(frames)} entries for {n} images: give one colour (or None) per image")
    if pad is None:
        pad = max(1, round(max(h, w) / 10))
    canvas = tile(imgs, nrow, pad=pad)
    ax.imshow(canvas, interpolation="nearest" if max(h, w) < 64 else "antialiased", vmin=0, vmax=1)
    ax.set_axis_off()
    if frames is not None:
        nrow = max(1, min(nrow, n))
        for i, colour in enumerate(frames):
            if colour is None:
                continue
            r, col = divmod(i, nrow)
            y, x = pad + r * (h + pad), pad + col * (w + pad)
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=colour, linewidth=frame_width))
    return canvas


def label_colors(n: int) -> np.ndarray:
    """``n`` distinct qualitative colours as an n×4 RGBA array.

    tab10 up to 10 classes, tab20 up to 20, then tab20 + tab20b + tab20c (60); beyond that evenly
    spaced hues, with alternating lightness so that neighbours differ.
    """
    if n < 0:
        raise DataError(f"number of colours must be non-negative, got {n}")
    cmaps = matplotlib.colormaps
    if n <= 10:
        base = [cmaps["tab10"](i) for i in range(10)]
    elif n <= 20:
        base = [cmaps["tab20"](i) for i in range(20)]
    elif n <= 60:
        base = [cmaps[name](i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    else:
        hsv = cmaps["hsv"](np.linspace(0, 1, n, endpoint=False))
        hsv[1::2, :3] *= 0.65
        return hsv
    return np.array(base[:n], dtype=np.float64).reshape(n, 4)


def as_labels(labels: Any, n: int, what: str = "images") -> np.ndarray | None:
    """Validate optional integer labels of length ``n``; None stays None.

    Raises
    ------
    DataError
        When the labels are not a 1-D array of ``n`` non-negative integers.
    """
    if labels is None:
        return None
    y = as_numpy(labels)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"labels must be a 1-D array with one entry per {what} ({n}), got shape {tuple(y.shape)}")
    if y.dtype.kind not in "iub":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError(f"labels must be non-negative class indices, got minimum {int(y.min())}")
    return y


def class_name(label: int, class_names: Sequence[str] | None) -> str:
    """``class_names[label]`` when available, else the label number."""
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)
