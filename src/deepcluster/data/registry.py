"""Dataset names, default locations, normalisation statistics and the :func:`load_dataset` entry point."""

from __future__ import annotations

from pathlib import Path

from deepcluster.core.errors import DataError
from deepcluster.data.base import ImageDataset, check_image_size, finalize

#: Where each dataset is looked for when no root is given.
#: Fashion-MNIST is what Debian's ``dataset-fashion-mnist`` package installs.
DEFAULT_ROOTS: dict[str, str] = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
}

_DATASETS = ("fashion-mnist", "mnist", "cifar10", "svhn", "folder", "ingested", "digits")
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "imagefolder": "folder",
}
SPLITS = ("train", "test")

# Per-channel mean/std of the train split in [0, 1] units. Folders get a neutral 0.5/0.5,
# which maps pixels to [-1, 1] without having to scan the user's images first.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    # Measured on the 28×28 train split produced by digits.py.
    "digits": ((0.3057,), (0.3245,)),
    "folder": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # An ingested pool is normalised with the statistics of what it was ingested from (when known).
    "ingested": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

_NEEDS_ROOT_HINT = {
    "mnist": "download the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) into a folder",
    "cifar10": "download and extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
    "svhn": "download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/",
    "folder": "put your images in a folder (one subfolder per class if you have labels)",
    "ingested": "create one with `deepcluster data ingest SOURCE OUT`",
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`.

    Returns
    -------
    list of str
        Canonical dataset names, in a stable order.
    """
    return list(_DATASETS)


def canonical_name(name: str) -> str:
    """Resolve case and aliases (``"FMNIST"`` → ``"fashion-mnist"``); DataError when unknown."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _DATASETS:
        raise DataError(
            f"unknown dataset {name!r}: choose one of {', '.join(_DATASETS)} "
            "(use 'folder' for your own images)"
        )
    return key


def dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std, in [0, 1] pixel units, used to normalise ``name``.

    Parameters
    ----------
    name : str
        A dataset name (aliases accepted).

    Returns
    -------
    (mean, std) : tuple of tuples of float
        One value per channel (1 for grayscale datasets, 3 for RGB ones); ``folder``
        datasets get ``(0.5, 0.5, 0.5)`` for both.
    """
    return _STATS[canonical_name(name)]


def _resolve_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        default = DEFAULT_ROOTS.get(name)
        if default is None:
            raise DataError(
                f"dataset {name!r} has no default location: {_NEEDS_ROOT_HINT[name]} "
                "and pass --set data.root=DIR"
            )
        path = Path(default)
        if not path.is_dir():
            raise DataError(
                f"Fashion-MNIST is not installed at its default location {path}: on Debian/Ubuntu run "
                "`sudo apt-get install dataset-fashion-mnist`, or download the four IDX files "
                "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                "t10k-labels-idx1-ubyte.gz) into a folder and pass --set data.root=DIR"
            )
        return path
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data folder {path} for dataset {name!r} does not exist: point data.root at the images "
                        "(--set data.root=DIR for a new run; --data-root DIR for a run folder whose data moved)")
    if not path.is_dir():
        raise DataError(
            f"data root {path} for dataset {name!r} is a file, not a folder: "
            "pass the folder that contains it (--set data.root=DIR for a new run; --data-root DIR for a run folder)"
        )
    return path


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    resize: int | None = None,
) -> ImageDataset:
    """Load a dataset as uint8 images N×C×H×W with labels when known.

    Parameters
    ----------
    name : str
        One of :func:`available_datasets` (case-insensitive, aliases like ``"fmnist"`` accepted).
    root : str or Path, optional
        Folder holding the files; defaults to :data:`DEFAULT_ROOTS` when listed there.
        Ignored by ``"digits"``, which ships with scikit-learn.
    split : {"train", "test"}
        Which part to load. ``"folder"`` datasets have no split and return all images for both.
    image_size : int, optional
        Resize to ``image_size``×``image_size`` (bilinear, antialiased) when given and different.
        ``"folder"`` defaults to 32 and ``"digits"`` to 28; the others keep their native size.
    limit : int, optional
        Keep a random subset of ``limit`` samples (reproducible through ``seed``, original order kept).
    seed : int
        Seed of the ``limit`` subset.
    resize : int, optional
        Resize the shorter side to ``resize`` first, then centre-crop to ``image_size`` (default:
        the native size): torchvision's ``Resize`` + ``CenterCrop``, as the Deep Dive authors load
        Fashion-MNIST (44 then 32 px). In-memory datasets only (MNIST, Fashion-MNIST, CIFAR-10, SVHN).

    Returns
    -------
    ImageDataset
        In memory for every dataset except ``"folder"``, whose images are read lazily.

    Raises
    ------
    DataError
        Unknown name or split, missing or corrupt files; the message names the file and the fix.
    """
    name = canonical_name(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for dataset {name!r}: use 'train' or 'test'")
    check_image_size(image_size)
    if resize is not None and name in ("digits", "ingested", "folder"):
        raise DataError(f"data.resize (resize, then centre-crop) applies to the in-memory datasets (mnist, fashion-mnist, "
                        f"cifar10, svhn), not {name}: drop it, or prepare the images at the size you want")
    check_image_size(resize)

    if name == "digits":
        from deepcluster.data.digits import load_digits_dataset

        return finalize(load_digits_dataset(split, image_size), None, limit, seed)

    path = _resolve_root(name, root)
    if name == "ingested":
        from deepcluster.data.pool_reader import IngestedDataset

        dataset = IngestedDataset(path)
        if image_size is not None and image_size != dataset.size:
            raise DataError(f"{path} was ingested at {dataset.size} px and data.image_size is {image_size}: set "
                            f"data.image_size={dataset.size} (or off), or ingest the source again at {image_size}")
        return finalize(dataset, None, limit, seed)
    if name == "folder":
        from deepcluster.data.folder import load_folder

        dataset: ImageDataset = load_folder(path, image_size)
        return finalize(dataset, None, limit, seed)
    if name in ("mnist", "fashion-mnist"):
        from deepcluster.data.idx import load_idx

        dataset = load_idx(name, path, split)
    elif name == "cifar10":
        from deepcluster.data.cifar import load_cifar10

        dataset = load_cifar10(path, split)
    else:
        from deepcluster.data.svhn import load_svhn

        dataset = load_svhn(path, split)
    return finalize(dataset, image_size, limit, seed, resize=resize)
