"""``deepcluster data ingest SOURCE OUT``: a pool of images into one random-access dataset.

Sources: an image folder (ImageFolder layout, or flat), WebDataset tar shards as img2dataset
writes them (``{key}.jpg|jpeg|png|webp``, optional ``{key}.cls`` with the class number), or a
dataset deepcluster reads already (Fashion-MNIST / MNIST IDX files, CIFAR-10 pickles, SVHN .mat,
scikit-learn's digits). Every image is decoded and resized to ``size`` × ``size`` (as the folder
loader does) in DataLoader worker processes and written to the layout of
:mod:`deepcluster.data.pool_reader`.

Tar shards are read with the standard library's ``tarfile``: one pass lists the members and
their offsets, then workers read each image's bytes at its offset (random access, any number of
workers over any number of shards). The ``webdataset`` package streams shards sequentially
instead; ``make bench`` measures both (docs/data.md).

Safe to interrupt: the work in progress lives in ``OUT/.ingest`` and re-running the same command
continues where it stopped (a chunk at a time is made durable before it counts as done); a
folder is a finished dataset only once ``dataset.json`` is written, last. Images that cannot be
decoded are skipped and listed in ``skipped.csv``; they never stop the ingest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from deepcluster import __version__
from deepcluster.core import files as dio
from deepcluster.core.errors import DataError, first_line
from deepcluster.core.progress import progress_bar
from deepcluster.data.folder import IMG_EXTENSIONS, load_folder
from deepcluster.data.pool_reader import FORMAT, INDEX, MANIFEST, PIXELS, SKIPPED, read_manifest

__all__ = ["ingest", "verify"]

TAR_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")
_CHUNK = 512  # images decoded, written and made durable at a time
Log = Callable[[str], None]


@dataclass(frozen=True)
class _Item:
    """One source image: a file, or a member of a tar shard (``offset``/``length`` of its bytes)."""

    path: str
    label: int = -1
    offset: int = -1
    length: int = -1


# ------------------------------------------------------------------------------------------ sources


def _tar_items(shards: list[Path]) -> tuple[list[_Item], list[str] | None]:
    items: list[_Item] = []
    for shard in shards:
        try:
            with tarfile.open(shard, "r:") as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                by_key: dict[str, dict[str, tarfile.TarInfo]] = {}
                for m in members:
                    key, _, ext = m.name.rpartition(".")
                    by_key.setdefault(key, {})[ext.lower()] = m
                for key in sorted(by_key):
                    parts = by_key[key]
                    image = next((parts[e[1:]] for e in TAR_IMAGE_EXT if e[1:] in parts), None)
                    if image is None:
                        continue
                    label = -1
                    if "cls" in parts:
                        raw = tar.extractfile(parts["cls"]).read().decode("utf-8", "replace").strip()
                        label = int(raw) if raw.lstrip("-").isdigit() else -1
                    items.append(_Item(f"{shard}:{image.name}", label, image.offset_data, image.size))
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot read tar shard {shard} ({e.__class__.__name__}: {e}): is it an uncompressed "
                            "WebDataset .tar?") from None
    return items, None


def _list_source(source: Path) -> tuple[str, list[_Item], list[str] | None]:
    """What kind of source this is, its images in a fixed order, and class names when known."""
    if source.is_file() and source.suffix == ".tar":
        return ("webdataset", *_tar_items([source]))
    if not source.is_dir():
        raise DataError(f"ingest source {source} does not exist: pass an image folder, a folder of .tar shards, "
                        "or the folder of a dataset deepcluster reads (IDX, CIFAR-10, SVHN)")
    shards = sorted(source.glob("*.tar"))
    if shards:
        return ("webdataset", *_tar_items(shards))
    names = {p.name for p in source.iterdir()}
    if {f"{s}-images-idx3-ubyte{z}" for s in ("train", "t10k") for z in ("", ".gz")} & names:
        return "fashion-mnist", [], None  # any IDX pair (MNIST too): the pixels are read the same way
    if "data_batch_1" in names or (source / "cifar-10-batches-py").is_dir():
        return "cifar10", [], None
    if {"train_32x32.mat", "test_32x32.mat"} & names:
        return "svhn", [], None
    folder = load_folder(source)
    labels = folder.labels if folder.labels is not None else np.full(len(folder), -1)
    return "folder", [_Item(p, int(lab)) for p, lab in zip(folder.paths, labels)], folder.classes


class _Decode(torch.utils.data.Dataset):
    """Decodes items in DataLoader workers: (position, uint8 C×S×S array or None, original (h, w), error)."""

    def __init__(self, items: list[_Item], size: int, channels: int) -> None:
        self.items, self.size, self.mode = items, size, "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, tuple[int, int], str]:
        item = self.items[i]
        try:
            if item.offset >= 0:
                shard, _, _ = item.path.rpartition(":")
                with open(shard, "rb") as f:
                    f.seek(item.offset)
                    data = io.BytesIO(f.read(item.length))
                img = Image.open(data)
            else:
                img = Image.open(item.path)
            with img:
                img.load()  # decode now: a truncated file fails here, not later
                original = (img.height, img.width)
                img = img.convert(self.mode)
            tensor = TF.pil_to_tensor(img)
            if tensor.shape[1:] != (self.size, self.size):
                tensor = TF.resize(tensor, [self.size, self.size], antialias=True)
            return i, tensor.numpy(), original, ""
        # PIL reports broken files with many types: any failure means "this image is bad"
        except Exception as e:  # noqa: BLE001 - see above
            return i, None, (0, 0), f"{e.__class__.__name__}: {first_line(e)}"


def _known_dataset(kind: str, source: Path, split: str, size: int | None, channels: int | None):
    from deepcluster.data.base import resize_images
    from deepcluster.data.registry import load_dataset

    data = load_dataset(kind, source, split=split)
    images = data.images_tensor()
    if channels == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    elif channels == 1 and images.shape[1] == 3:
        images = (images.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).round().to(torch.uint8)
    if size is not None:
        images = resize_images(images, size)
    labels = data.labels if data.labels is not None else np.full(len(images), -1)
    return images.contiguous(), labels, data.classes


# ------------------------------------------------------------------------------------------ ingest


def ingest(
    source: str | Path,
    out: str | Path,
    *,
    size: int | None = None,
    channels: int | None = None,
    split: str = "train",
    workers: int = 2,
    show_progress: bool = True,
    log: Log | None = None,
) -> dict[str, Any]:
    """Write (or finish writing) the ingested dataset of ``source`` into ``out``; returns its manifest.

    Parameters
    ----------
    source : path
        Image folder, folder of tar shards (or one shard), or a known dataset's folder.
    out : path
        The dataset folder to create (or the unfinished one to continue).
    size : int, optional
        Side the images are stored at (at least 8); default 32 for image files, the native size
        for known datasets.
    channels : {1, 3}, optional
        Default 3 for image files, the native channels for known datasets.
    split : str
        For known datasets: ``train`` or ``test``.
    workers : int
        Decoding processes (0: in this process).

    Raises
    ------
    DataError
        A missing or unreadable source, a bad size, an OUT that is a file or holds another ingest.
    DiskFullError
        The disk filled: free space and run the same command again, it continues.
    """
    log = log or (lambda m: None)
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if size is not None and size < 8:
        raise DataError(f"--size {size}: the stored images must be at least 8 px on a side")
    if channels not in (None, 1, 3):
        raise DataError(f"--channels {channels}: use 1 (grey) or 3 (RGB)")
    if out.exists() and not out.is_dir():
        raise DataError(f"ingest output {out} is a file: choose a folder for OUT")
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        log(f"{out} is already a finished dataset of {manifest['n']} images (`deepcluster data verify {out}` checks it)")
        return manifest
    kind, items, classes = _list_source(source)
    work = out / ".ingest"
    images_known = labels_known = None
    if kind in ("fashion-mnist", "cifar10", "svhn"):
        images_known, labels_known, classes = _known_dataset(kind, source, split, size, channels)
        n_candidates = len(images_known)
        c, s = int(images_known.shape[1]), int(images_known.shape[-1])
        fingerprint_items: Any = [kind, split, str(source), n_candidates]
    else:
        n_candidates = len(items)
        if not n_candidates:
            raise DataError(f"ingest source {source} holds no images (looked for {', '.join(IMG_EXTENSIONS)} and .tar "
                            "shards)")
        c, s = channels or 3, size or 32
        fingerprint_items = [kind, [(i.path, i.label, i.length) for i in items]]
    fingerprint = hashlib.sha256(json.dumps([fingerprint_items, c, s, FORMAT]).encode()).hexdigest()
    state = _start(work, fingerprint, out)
    item_bytes = c * s * s
    pixels = work / PIXELS
    written = state["written"]
    with dio.disk_full_as_error(work), open(pixels, "r+b" if pixels.exists() else "w+b") as f, \
            open(work / "index.partial.csv", "a", newline="") as index_file, \
            open(work / "skipped.partial.csv", "a", newline="") as skipped_file, \
            progress_bar("ingest", total=n_candidates, enabled=show_progress, unit="images") as advance:
        f.truncate(written * item_bytes)  # anything past the last durable chunk is redone
        f.seek(0, os.SEEK_END)
        index_csv, skipped_csv = csv.writer(index_file, lineterminator="\n"), csv.writer(skipped_file, lineterminator="\n")
        advance(state["next"])
        for batch in _decoded(images_known, labels_known, items, state["next"], s, c, workers):
            for position, array, original, error, path, label in batch:
                if array is None:
                    skipped_csv.writerow([position, path, error])
                    state["skipped"] += 1
                    continue
                f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
                index_csv.writerow([written, path, label, original[0], original[1]])
                written += 1
            for handle in (f, index_file, skipped_file):
                handle.flush()
                os.fsync(handle.fileno())
            state["next"], state["written"] = batch[-1][0] + 1, written
            dio.write_json(work / "state.json", state)  # the chunk is durable: it counts as done
            advance(len(batch))
    if not written:
        raise DataError(f"none of the {n_candidates} images of {source} could be decoded: see "
                        f"{work / 'skipped.partial.csv'}")
    log(f"ingest: {written} images written, {state['skipped']} skipped"
        + (f" (listed in {out / SKIPPED})" if state["skipped"] else ""))
    header = "index,path,label,height,width\n"
    dio.write_text(out / INDEX, header + (work / "index.partial.csv").read_text())
    dio.write_text(out / SKIPPED, "position,path,reason\n" + (work / "skipped.partial.csv").read_text())
    with dio.disk_full_as_error(out / PIXELS):
        os.replace(pixels, out / PIXELS)
    manifest = {
        "format": FORMAT, "n": written, "channels": c, "size": s, "dtype": "uint8",
        "source": str(source), "source_kind": kind, "split": split if images_known is not None else None,
        "classes": classes, "skipped": state["skipped"],
        "sha256": {PIXELS: _sha256(out / PIXELS), INDEX: _sha256(out / INDEX)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "version": __version__,
    }
    dio.write_json(out / MANIFEST, manifest)  # last: from now on OUT is a finished dataset
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    return manifest


def _start(work: Path, fingerprint: str, out: Path) -> dict[str, Any]:
    """A new ingest's state, or the state of the interrupted one to continue (its partial files
    cut back to the last durable chunk)."""
    path = work / "state.json"
    if path.is_file():
        try:
            state = json.loads(path.read_text())
        except ValueError:
            state = None
        if state is not None and state.get("fingerprint") != fingerprint:
            raise DataError(f"{out} holds an unfinished ingest of another source or size: remove {work} (or choose "
                            "another OUT) to start this one")
        if state is not None:
            _keep_lines(work / "index.partial.csv", lambda i, row: i < state["written"])
            _keep_lines(work / "skipped.partial.csv", lambda i, row: int(row[0]) < state["next"])
            return state
    if out.exists() and any(p.name != ".ingest" for p in out.iterdir()):
        raise DataError(f"ingest output {out} already holds files: choose an empty or new folder for OUT")
    work.mkdir(parents=True, exist_ok=True)
    for name in ("index.partial.csv", "skipped.partial.csv"):
        (work / name).write_text("")
    return {"fingerprint": fingerprint, "next": 0, "written": 0, "skipped": 0}


def _keep_lines(path: Path, keep: Callable[[int, list[str]], bool]) -> None:
    rows = list(csv.reader(io.StringIO(path.read_text()))) if path.exists() else []
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(r for i, r in enumerate(rows) if keep(i, r))
    dio.write_text(path, buf.getvalue())


def _decoded(images_known, labels_known, items: list[_Item], start: int, size: int, channels: int,
             workers: int) -> Iterator[list[tuple]]:
    """Chunks of (position, array or None, original size, error, path, label) from ``start`` on."""
    if images_known is not None:
        for lo in range(start, len(images_known), _CHUNK):
            hi = min(lo + _CHUNK, len(images_known))
            yield [(i, images_known[i].numpy(), tuple(images_known.shape[-2:]), "", f"#{i}", int(labels_known[i]))
                   for i in range(lo, hi)]
        return
    todo = items[start:]
    loader = torch.utils.data.DataLoader(_Decode(todo, size, channels), batch_size=_CHUNK, num_workers=workers,
                                         collate_fn=list, multiprocessing_context="fork" if workers else None)
    for batch in loader:
        yield [(start + i, arr, orig, err, todo[i].path, todo[i].label) for i, arr, orig, err in batch]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(root: str | Path) -> dict[str, Any]:
    """Recompute the checksums of an ingested dataset; raises :class:`DataError` on any mismatch."""
    root = Path(root)
    manifest = read_manifest(root)
    for name, expected in manifest["sha256"].items():
        if _sha256(root / name) != expected:
            raise DataError(f"{root / name} does not match its checksum in {MANIFEST}: the file was changed or "
                            "damaged; ingest the source again")
    return manifest
