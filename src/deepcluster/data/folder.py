"""Your own images: an ImageFolder tree (labelled) or a flat folder (unlabeled)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deepcluster.core.errors import DataError
from deepcluster.data.base import FolderImageDataset

# Same list as torchvision.datasets.folder.IMG_EXTENSIONS, kept here so the rule is visible.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: Side of the square images a folder dataset yields when no ``image_size`` is given.
DEFAULT_FOLDER_SIZE = 32


def is_image_file(name: str) -> bool:
    """True when ``name`` has one of :data:`IMG_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMG_EXTENSIONS)


def _visible(entries):
    # Hidden entries (.DS_Store, .ipynb_checkpoints, ._foo.jpg) are never samples.
    return [e for e in entries if not e.name.startswith(".")]


def _images_under(folder: Path) -> list[str]:
    """Image files anywhere below ``folder``, sorted, as ImageFolder finds them."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and is_image_file(f)
        )
    return found


def load_folder(root: Path, image_size: int | None = None) -> FolderImageDataset:
    """Index the images of ``root`` without decoding them.

    ``root/<class>/**/<image>`` gives a labelled dataset (classes sorted by name, as in
    torchvision's ImageFolder); a flat ``root/<image>`` folder gives an unlabeled one.
    Images are read lazily, converted to RGB and resized to ``image_size`` (default 32).
    """
    size = DEFAULT_FOLDER_SIZE if image_size is None else image_size
    try:
        entries = _visible(sorted(os.scandir(root), key=lambda e: e.name))
    except OSError as exc:
        raise DataError(f"cannot list image folder {root} ({exc.strerror or exc}): check its permissions") from None
    subdirs = [e for e in entries if e.is_dir()]
    loose = [e for e in entries if e.is_file() and is_image_file(e.name)]
    ext_list = ", ".join(IMG_EXTENSIONS)

    if not subdirs:
        if not loose:
            raise DataError(
                f"image folder {root} contains no images (looked for {ext_list}): "
                "put images in it, or one subfolder of images per class, and point --set data.root=DIR at it"
            )
        return FolderImageDataset("folder", [e.path for e in loose], size)

    if loose:
        raise DataError(
            f"image folder {root} mixes class subfolders ({', '.join(d.name for d in subdirs[:3])}...) with "
            f"{len(loose)} loose images such as {loose[0].name}: move the loose images into a class subfolder, "
            "or move the subfolders out for an unlabeled dataset"
        )
    classes = [d.name for d in subdirs]
    paths: list[str] = []
    labels: list[int] = []
    for label, d in enumerate(subdirs):
        found = _images_under(Path(d.path))
        if not found:
            raise DataError(
                f"class folder {d.path} contains no images (looked for {ext_list}): "
                "add images to it or remove it"
            )
        paths.extend(found)
        labels.extend([label] * len(found))
    return FolderImageDataset("folder", paths, size, np.asarray(labels, dtype=np.int64), classes)
