"""ImageSource's reading helpers: batches gathered ahead by a thread, decode workers per process."""

from __future__ import annotations

import pytest
import torch

from deepcluster.data.source import _read_ahead, default_workers


def test_read_ahead_yields_every_item_in_order():
    items = [torch.full((2,), i) for i in range(20)]
    assert [int(t[0]) for t in _read_ahead(iter(items), depth=2)] == list(range(20))


def test_read_ahead_raises_the_producers_error_in_the_consumer():
    def broken():
        yield torch.zeros(1)
        raise OSError("disk gone")

    got = _read_ahead(broken(), depth=2)
    assert next(got).shape == (1,)
    with pytest.raises(OSError, match="disk gone"):
        next(got)


def test_stopping_early_stops_the_thread():
    import threading

    before = threading.active_count()
    got = _read_ahead((torch.zeros(1) for _ in range(1000)), depth=2)
    next(got)
    got.close()
    assert threading.active_count() == before


def test_default_workers_share_the_cores_among_the_ranks_of_a_machine(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = default_workers()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_workers() == max(1, alone // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1000")
    assert default_workers() == 1


@pytest.fixture
def jpeg_folder(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            smooth = np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 48×64
            Image.fromarray(smooth).save(tmp_path / cls / f"{i}.jpg", quality=90)
    return tmp_path


def test_a_streamed_jpeg_folder_decoded_in_batches_matches_pil(jpeg_folder):
    from deepcluster.data.folder import load_folder
    from deepcluster.data.source import ImageSource

    data = load_folder(jpeg_folder, image_size=24)
    pil = ImageSource(data, streamed=True, workers=0)
    batched = ImageSource(data, streamed=True, workers=1, decode_on="cpu")
    assert batched.decode_on == torch.device("cpu") and "JPEG decoded on cpu" in batched.label
    idx = [[0, 3, 5], [11, 2], []]
    for a, b in zip(pil.batches(idx), batched.batches(idx)):
        assert a.shape == b.shape and b.dtype == torch.uint8
        assert len(a) == 0 or (a.int() - b.int()).abs().max() <= 2  # the same libjpeg; resize rounding at most
    assert batched.subset([1, 2]).decode_on is not None and batched.take([4]).shape == (1, 3, 24, 24)


def test_decode_auto_decodes_on_the_gpu_only(jpeg_folder):
    from deepcluster.core.config import TrainConfig
    from deepcluster.data.folder import load_folder
    from deepcluster.data.source import source_for

    data = load_folder(jpeg_folder, image_size=24)
    cfg = TrainConfig.model_validate({"data": {"name": "folder", "memory_budget_mb": 0}})
    assert source_for(cfg, data, device="cpu").decode_on is None
    forced = TrainConfig.model_validate({"data": {"name": "folder", "memory_budget_mb": 0, "decode": "device"}})
    assert source_for(forced, data, device="cpu").decode_on == torch.device("cpu")


def test_a_broken_jpeg_is_named_when_decoding_in_batches(jpeg_folder):
    from deepcluster.core.errors import DataError
    from deepcluster.data.folder import load_folder
    from deepcluster.data.source import ImageSource

    (jpeg_folder / "a" / "3.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    data = load_folder(jpeg_folder, image_size=24)
    with pytest.raises(DataError, match="3.jpg"):
        list(ImageSource(data, streamed=True, workers=0, decode_on="cpu").batches([[0, 1, 2, 3]]))
