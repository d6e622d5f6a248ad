import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from deepcluster.core.errors import DataError
from deepcluster.data import DEFAULT_FOLDER_SIZE, FolderImageDataset, load_dataset

from .formats import make_image_folder, write_png


def test_image_folder_is_labelled(tmp_path):
    make_image_folder(tmp_path, {"cat": 3, "dog": 2, "b_gray": 2})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    ds = load_dataset("folder", tmp_path)
    assert isinstance(ds, FolderImageDataset) and ds.name == "folder"
    assert ds.classes == ["b_gray", "cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 2, 2] and ds.labels.dtype == np.int64
    assert len(ds) == 7 and len(ds.paths) == 7 and ds.paths[2].endswith("cat/0.png")
    x = ds[0]
    # Grayscale files come out as RGB, resized to the default 32×32.
    assert x.dtype == torch.uint8 and x.shape == (3, DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_SIZE)
    assert ds.channels == 3 and torch.equal(x[0], x[1])
    assert int(ds[2][0, 5, 5]) == 10  # solid colour survives the resize
    all_ = ds.images_tensor()
    assert all_.shape == (7, 3, 32, 32) and all_.dtype == torch.uint8
    assert torch.equal(all_[4], ds[4])


def test_flat_folder_is_unlabeled(tmp_path):
    for k in range(4):
        write_png(tmp_path / f"img{k}.PNG", size=(40, 20), value=10 * k)
    write_png(tmp_path / ".thumb.png")
    ds = load_dataset("folder", tmp_path, image_size=16)
    assert len(ds) == 4 and ds.labels is None and ds.classes is None
    assert ds[1].shape == (3, 16, 16)
    assert ds.images_tensor().shape == (4, 3, 16, 16)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.uint8


def test_folder_subset_and_limit(tmp_path):
    make_image_folder(tmp_path, {"a": 5, "b": 5})
    ds = load_dataset("folder", tmp_path)
    sub = ds.subset(np.array([9, 0]))
    assert isinstance(sub, FolderImageDataset)
    assert sub.paths == [ds.paths[9], ds.paths[0]] and sub.labels.tolist() == [1, 0]
    assert torch.equal(sub[0], ds[9])
    ds.images_tensor()
    cached_sub = ds.subset(torch.tensor([1, 2]))
    assert torch.equal(cached_sub.images_tensor(), ds.images_tensor()[1:3])
    lim = load_dataset("folder", tmp_path, limit=4, seed=7)
    again = load_dataset("folder", tmp_path, limit=4, seed=7)
    assert len(lim) == 4 and lim.paths == again.paths and set(lim.paths) <= set(ds.paths)


def test_unreadable_image_is_named(tmp_path):
    make_image_folder(tmp_path, {"a": 2})
    bad = tmp_path / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = load_dataset("folder", tmp_path)
    idx = ds.paths.index(str(bad))
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        ds[idx]
    with pytest.raises(DataError, match="broken.png"):
        ds.images_tensor()


def test_truncated_image_is_named(tmp_path):
    good = write_png(tmp_path / "big.png", size=(64, 64))
    # Noise does not compress, so cutting the file really loses pixel data.
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(DataError, match="big.png"):
        load_dataset("folder", tmp_path)[0]


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=f"image folder {tmp_path} contains no images"):
        load_dataset("folder", tmp_path)


def test_empty_class_folder(tmp_path):
    make_image_folder(tmp_path, {"a": 2})
    (tmp_path / "z_empty").mkdir()
    with pytest.raises(DataError, match="class folder .*z_empty contains no images"):
        load_dataset("folder", tmp_path)


def test_mixed_layout(tmp_path):
    make_image_folder(tmp_path, {"a": 2})
    write_png(tmp_path / "loose.png")
    with pytest.raises(DataError, match="mixes class subfolders .*loose.png"):
        load_dataset("folder", tmp_path)


def test_root_is_a_file(tmp_path):
    f = write_png(tmp_path / "one.png")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_dataset("folder", f)
