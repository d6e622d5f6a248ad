"""The built-in concept probe: a small synthetic Broden-format data set for network dissection.

Every image is a background -- a crop of one of scikit-image's bundled photographs, a full-frame
texture, or a plain colour -- with 1 to 3 shapes drawn on it. Concepts, by Broden category:

* ``object`` (pixel): the visible pixels of each shape (:data:`SHAPES`); later shapes occlude
  earlier ones, so one mask channel holds them all.
* ``part`` (pixel, 2 channels): ``<shape>-top-left`` ... ``<shape>-bottom-right``: the visible
  object pixels in each quadrant around the shape's centre (they partition the object mask);
  ``<shape>-outline``: the visible pixels of the shape's inner border band (sometimes drawn in a
  contrasting colour), which overlaps the quadrants -- hence the second channel.
* ``texture`` (image-level, as Broden's DTD textures): the texture of a full-frame texture
  background (:data:`TEXTURES`: stripes in three orientations, checks, dots, zigzags, blotchy
  noise; each drawn at a random period of 4-12 px, two random colours).
* ``material`` (pixel): where a texture is visible -- the background of a texture image and
  the shapes filled with a texture: ``<texture>-material``. Every concept is listed under one
  category (version 1 listed each texture under both ``texture`` and ``material``, which
  NetDissect-Lite scores differently from NetDissect: :mod:`deepcluster.interpret.dissect`).
* ``color`` (pixel): every pixel of the final image named by its nearest prototype in CIELAB
  among the 11 basic colour terms (:data:`COLOR_NAMES`, :func:`color_name_map`).
* ``scene`` (image-level): the photograph a background was cropped from (:data:`PHOTOS`).

Backgrounds are read straight from the image files inside the installed ``skimage/data``
folder (never through ``skimage.data``'s pooch download path), so nothing touches the network.

Default size: 1000 images of 64 x 64 (masks at 64 x 64 too). 64 px leaves shapes 10-22 px in
radius, enough for quadrants, outlines and textures of period up to 12 px to be visible after a
network's down-sampling; 1000 images give each shape, part and texture ~100+ occurrences, so
IoUs are stable, while a small net dissects it on CPU in seconds to minutes (models taking
28 x 28 grey or 32 x 32 RGB input are fed resized images). Generation takes ~10 s on 2 busy
cores, mostly spent creating its 6 files per image.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.color import rgb2lab

from deepcluster.core import files as dio
from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.progress import progress_bar
from deepcluster.interpret.broden import INDEX_FILE, BrodenWriter

#: Bump when the generator changes what it draws, so cached probes are regenerated.
PROBE_VERSION = 2
PROBE_META = "probe.json"

#: The 11 basic colour terms (Berlin & Kay), in label order.
COLOR_NAMES = ("black", "blue", "brown", "grey", "green", "orange", "pink", "purple", "red", "white", "yellow")
#: sRGB prototypes of each colour term (several for the broad terms, e.g. navy and cyan-ish blue).
COLOR_PROTOTYPES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "black": ((0, 0, 0),),
    "blue": ((0, 0, 255), (20, 40, 140), (0, 190, 230), (120, 180, 240)),
    "brown": ((140, 80, 30), (190, 140, 100)),
    "grey": ((128, 128, 128),),
    "green": ((0, 160, 0), (0, 255, 0), (110, 170, 70)),
    "orange": ((255, 140, 0),),
    "pink": ((255, 160, 200), (230, 40, 200)),
    "purple": ((128, 0, 160), (160, 100, 200)),
    "red": ((220, 0, 0), (150, 10, 20)),
    "white": ((255, 255, 255),),
    "yellow": ((255, 240, 0),),
}
SHAPES = ("circle", "ellipse", "square", "rectangle", "triangle", "diamond", "hexagon", "star", "cross", "ring", "crescent")
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
PART_NAMES = (*QUADRANTS, "outline")
TEXTURES = ("striped-horizontal", "striped-vertical", "striped-diagonal", "chequered", "dotted", "zigzagged", "blotchy")
#: Scene name -> file in skimage's bundled data folder (all ship inside the scikit-image wheel).
PHOTOS: dict[str, str] = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "motorcycle": "motorcycle_left.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}
DEFAULT_N_IMAGES = 1000
DEFAULT_SIZE = 64
MIN_SIZE = 24

# ---------------------------------------------------------------------------------------------
# Colours

_PROTO_NAMES = np.array([COLOR_NAMES.index(n) for n, ps in COLOR_PROTOTYPES.items() for _ in ps])
_PROTO_RGB = np.array([p for ps in COLOR_PROTOTYPES.values() for p in ps], dtype=np.uint8)
_PROTO_LAB = rgb2lab(_PROTO_RGB[None])[0]
_PROTO_SQ = (_PROTO_LAB**2).sum(1)


def color_name_map(rgb: np.ndarray) -> np.ndarray:
    """Index into :data:`COLOR_NAMES` of each pixel of a uint8 ``... x 3`` RGB array (nearest
    prototype in CIELAB, Euclidean distance)."""
    rgb = np.asarray(rgb)
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected ... x 3 RGB, got shape {rgb.shape}")
    lab = rgb2lab(rgb.reshape(-1, 1, 3).astype(np.uint8))[:, 0]  # N x 3
    # squared distance up to the per-pixel constant |lab|^2
    d = _PROTO_SQ[None] - 2.0 * lab @ _PROTO_LAB.T
    return _PROTO_NAMES[d.argmin(1)].reshape(rgb.shape[:-1])


def _random_color(rng: np.random.Generator, jitter: int = 25) -> np.ndarray:
    base = _PROTO_RGB[rng.integers(len(_PROTO_RGB))].astype(np.int16)
    return np.clip(base + rng.integers(-jitter, jitter + 1, 3), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Backgrounds


def photo_path(name: str) -> Path:
    """Path of a bundled skimage photograph (:data:`PHOTOS`), checked to exist on disk."""
    path = Path(str(resources.files("skimage") / "data" / PHOTOS[name]))
    if not path.is_file():
        raise DataError(
            f"scikit-image's bundled photograph {path} is missing: reinstall scikit-image (>=0.22) from its wheel"
        )
    return path


def load_photos(min_side: int) -> dict[str, np.ndarray]:
    """All :data:`PHOTOS` as H x W x 3 uint8, down-scaled so the shorter side is ~``min_side``."""
    out = {}
    for name in PHOTOS:
        with Image.open(photo_path(name)) as im:
            im = im.convert("RGB")
            scale = min_side / min(im.size)
            if scale < 1:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BOX)
            out[name] = np.asarray(im)
    return out


def _photo_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = photo.shape[:2]
    side = int(rng.integers(max(8, min(h, w) // 4), min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))


# ---------------------------------------------------------------------------------------------
# Textures


def texture_pattern(kind: str, size: int, period: float, rng: np.random.Generator) -> np.ndarray:
    """Bool size x size two-tone pattern of the texture ``kind`` (:data:`TEXTURES`)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, period)
    half = period / 2
    if kind == "striped-horizontal":
        return ((y + phase) // half) % 2 == 0
    if kind == "striped-vertical":
        return ((x + phase) // half) % 2 == 0
    if kind == "striped-diagonal":
        t = x + y if rng.random() < 0.5 else x - y
        return ((t / np.sqrt(2) + phase) // half) % 2 == 0
    if kind == "chequered":
        return (((x + phase) // half) + ((y + phase) // half)) % 2 == 0
    if kind == "dotted":
        cy = (y + phase) % period - half
        cx = (x + phase) % period - half
        return cx**2 + cy**2 <= (0.3 * period) ** 2
    if kind == "zigzagged":
        tri = np.abs(((x + phase) / period) % 2 - 1)  # triangle wave in x, period 2 * period
        return ((y + tri * period) // half) % 2 == 0
    if kind == "blotchy":
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=period / 4, mode="wrap")
        return noise > np.median(noise)
    raise ValueError(f"unknown texture {kind!r}")


def _texture_rgb(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    period = float(rng.choice((4.0, 6.0, 8.0, 12.0)))
    pat = texture_pattern(kind, size, period, rng)
    a = _random_color(rng)
    b = _random_color(rng)
    while np.abs(a.astype(int) - b.astype(int)).sum() < 120:
        b = _random_color(rng)
    return np.where(pat[..., None], a, b)


# ---------------------------------------------------------------------------------------------
# Shapes


def _regular(n: int, r: float, start: float) -> list[tuple[float, float]]:
    a = start + np.arange(n) * 2 * np.pi / n
    return list(zip(r * np.cos(a), r * np.sin(a)))


def _rotate(pts, theta: float) -> list[tuple[float, float]]:
    c, s = np.cos(theta), np.sin(theta)
    return [(c * px - s * py, s * px + c * py) for px, py in pts]


def shape_mask(kind: str, size: int, cx: float, cy: float, r: float, theta: float) -> np.ndarray:
    """Bool size x size mask of a shape inscribed in the circle of radius ``r`` around (cx, cy).

    ``theta`` (radians) rotates it; y grows downwards.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - cx, y - cy
    if kind == "circle":
        return dx**2 + dy**2 <= r**2
    if kind in ("ellipse", "ring", "crescent"):
        if kind == "ring":
            d2 = dx**2 + dy**2
            return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
        if kind == "crescent":
            ox, oy = 0.45 * r * np.cos(theta), 0.45 * r * np.sin(theta)
            return (dx**2 + dy**2 <= r**2) & ((dx - ox) ** 2 + (dy - oy) ** 2 > (0.85 * r) ** 2)
        c, s = np.cos(theta), np.sin(theta)
        u, v = c * dx + s * dy, -s * dx + c * dy
        return (u / r) ** 2 + (v / (0.55 * r)) ** 2 <= 1
    if kind == "square":
        pts = _regular(4, r, np.pi / 4)
    elif kind == "rectangle":
        a = np.arctan2(0.5, 1.0)
        pts = [(r * np.cos(a), r * np.sin(a)), (-r * np.cos(a), r * np.sin(a)), (-r * np.cos(a), -r * np.sin(a)), (r * np.cos(a), -r * np.sin(a))]
    elif kind == "triangle":
        pts = _regular(3, r, -np.pi / 2)
    elif kind == "diamond":
        pts = [(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)]
    elif kind == "hexagon":
        pts = _regular(6, r, 0)
    elif kind == "star":
        outer = _regular(5, r, -np.pi / 2)
        inner = _regular(5, 0.42 * r, -np.pi / 2 + np.pi / 5)
        pts = [p for pair in zip(outer, inner) for p in pair]
    elif kind == "cross":
        w = 0.33 * r
        h = np.sqrt(r**2 - w**2)
        pts = [(w, -h), (w, -w), (h, -w), (h, w), (w, w), (w, h), (-w, h), (-w, w), (-h, w), (-h, -w), (-w, -w), (-w, -h)]
    else:
        raise ValueError(f"unknown shape {kind!r}")
    pts = [(cx + px, cy + py) for px, py in _rotate(pts, theta)]
    im = Image.new("L", (size, size), 0)
    # PIL fills pixel (i, j) when its corner lies inside; shift by half a pixel to use centres.
    ImageDraw.Draw(im).polygon([(px - 0.5, py - 0.5) for px, py in pts], fill=1)
    return np.asarray(im, dtype=bool)


def quadrant_masks(mask: np.ndarray, cx: float, cy: float) -> list[np.ndarray]:
    """``mask`` split at (cx, cy) into top-left, top-right, bottom-left, bottom-right (a partition)."""
    y, x = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    top, left = y < cy, x < cx
    return [mask & top & left, mask & top & ~left, mask & ~top & left, mask & ~top & ~left]


_SHAPE_THETA: dict[str, Callable[[np.random.Generator], float]] = {
    "circle": lambda g: 0.0,
    "ring": lambda g: 0.0,
    "ellipse": lambda g: g.uniform(0, np.pi),
    "crescent": lambda g: g.uniform(0, 2 * np.pi),
    "square": lambda g: g.uniform(-np.pi / 12, np.pi / 12),
    "rectangle": lambda g: g.uniform(-np.pi / 12, np.pi / 12) + (np.pi / 2 if g.random() < 0.5 else 0.0),
    "triangle": lambda g: g.uniform(-np.pi / 9, np.pi / 9),
    "diamond": lambda g: g.uniform(-np.pi / 18, np.pi / 18),
    "hexagon": lambda g: g.uniform(0, np.pi / 3),
    "star": lambda g: g.uniform(-np.pi / 10, np.pi / 10),
    "cross": lambda g: g.uniform(-np.pi / 12, np.pi / 12),
}


# ---------------------------------------------------------------------------------------------
# The probe


class _Labels:
    """Label numbers of the probe, fixed whatever is drawn."""

    def __init__(self, w: BrodenWriter):
        self.color = [w.add_label(n, "color") for n in COLOR_NAMES]
        self.object = {s: w.add_label(s, "object") for s in SHAPES}
        self.part = {(s, p): w.add_label(f"{s}-{p}", "part") for s in SHAPES for p in PART_NAMES}
        self.texture = {t: w.add_label(t, "texture") for t in TEXTURES}
        self.material = {t: w.add_label(f"{t}-material", "material") for t in TEXTURES}
        self.scene = {p: w.add_label(p, "scene") for p in PHOTOS}


def _draw_image(size: int, rng: np.random.Generator, photos: dict[str, np.ndarray], L: _Labels):
    obj = np.zeros((size, size), np.int32)
    quad = np.zeros((size, size), np.int32)
    outline = np.zeros((size, size), np.int32)
    material = np.zeros((size, size), np.int32)
    labels: dict[str, list[int]] = {"scene": [], "texture": []}

    u = rng.random()
    if u < 0.6:
        name = list(photos)[rng.integers(len(photos))]
        img = _photo_crop(photos[name], size, rng).copy()
        labels["scene"].append(L.scene[name])
    elif u < 0.85:
        tex = TEXTURES[rng.integers(len(TEXTURES))]
        img = _texture_rgb(tex, size, rng)
        material[:] = L.material[tex]
        labels["texture"].append(L.texture[tex])
    else:
        img = np.broadcast_to(_random_color(rng), (size, size, 3)).copy()

    n_shapes = int(rng.choice((1, 2, 3), p=(0.4, 0.35, 0.25)))
    instance = np.zeros((size, size), np.int32)  # 1 + index in `placed` of the visible shape
    placed: list[tuple[str, float, float, np.ndarray]] = []  # kind, cx, cy, border band
    for _ in range(n_shapes):
        for _attempt in range(10):
            kind = SHAPES[rng.integers(len(SHAPES))]
            r = rng.uniform(0.15, 0.35) * size
            cx, cy = rng.uniform(r + 1, size - 1 - r), rng.uniform(r + 1, size - 1 - r)
            full = shape_mask(kind, size, cx, cy, r, _SHAPE_THETA[kind](rng))
            # keep every earlier shape at least 60 % visible
            if full.sum() >= 12 and all(
                ((instance == j) & ~full).sum() >= 0.6 * (instance == j).sum() for j in range(1, len(placed) + 1)
            ):
                break
        else:
            continue
        if rng.random() < 0.3:
            tex = TEXTURES[rng.integers(len(TEXTURES))]
            img[full] = _texture_rgb(tex, size, rng)[full]
            material[full] = L.material[tex]
        else:
            img[full] = _random_color(rng)
            material[full] = 0
        border = full & ~ndimage.binary_erosion(full, iterations=max(1, round(r / 6)))
        if rng.random() < 0.3:
            img[border] = _random_color(rng)
        placed.append((kind, cx, cy, border))
        instance[full] = len(placed)

    # objects and parts from the visible pixels, once every shape is drawn
    for j, (kind, cx, cy, border) in enumerate(placed, start=1):
        visible = instance == j
        obj[visible] = L.object[kind]
        for q, m in zip(QUADRANTS, quadrant_masks(visible, cx, cy)):
            quad[m] = L.part[(kind, q)]
        outline[visible & border] = L.part[(kind, "outline")]

    color = np.asarray(L.color, np.int32)[color_name_map(img)]
    masks = {"color": color, "object": obj, "part": [quad, outline], "material": material}
    return img, masks, labels


def _meta(n_images: int, size: int, seed: int) -> dict:
    return {"generator": "deepcluster concept probe", "version": PROBE_VERSION, "n_images": n_images, "size": size, "seed": seed}


def probe_is_made(root: str | Path, *, n_images: int = DEFAULT_N_IMAGES, size: int = DEFAULT_SIZE,
                  seed: int = 0) -> bool:
    """Whether ``root`` already holds the probe these arguments make (so that
    :func:`make_concept_probe` returns at once)."""
    root = Path(root)
    meta_path = root / PROBE_META
    if not ((root / INDEX_FILE).is_file() and meta_path.is_file()):
        return False
    try:
        old = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    meta = _meta(n_images, size, seed)
    return isinstance(old, dict) and {k: old.get(k) for k in meta} == meta


def make_concept_probe(
    root: str | Path,
    *,
    n_images: int = DEFAULT_N_IMAGES,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    show_progress: bool = True,
) -> Path:
    """Generate the concept probe (see the module docstring) in ``root``; returns ``root``.

    Same arguments, same files (byte for byte, on one machine). When ``root`` already holds a
    probe made with the same arguments it is reused as is. The folder is built next to ``root``
    and renamed into place at the end, so an interrupted run leaves no partial probe behind.
    """
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ConfigError(f"n_images must be a positive integer, got {n_images!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise ConfigError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    root = Path(root)
    meta = _meta(n_images, size, seed)
    if root.exists():
        if probe_is_made(root, n_images=n_images, size=size, seed=seed):
            return root
        if not root.is_dir() or any(root.iterdir()):
            raise DataError(
                f"{root} exists and does not hold a concept probe made with n_images={n_images}, size={size}, "
                f"seed={seed}: delete it or choose another folder"
            )

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        photos = load_photos(4 * size)
        writer = BrodenWriter(
            tmp, pixel_categories=("color", "object", "part", "material"), image_categories=("scene", "texture")
        )
        labels = _Labels(writer)
        width = len(str(n_images - 1))
        with progress_bar("concept probe", n_images, enabled=show_progress) as advance:
            for i in range(n_images):
                img, masks, image_labels = _draw_image(size, rng, photos, labels)
                writer.add_image(img.transpose(2, 0, 1), masks=masks, labels=image_labels, stem=f"probe/{i:0{width}d}")
                advance(1)
        writer.close()
        dio.write_json(tmp / PROBE_META, {**meta, "photos": PHOTOS})
        if root.exists():
            root.rmdir()  # empty, checked above
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
