"""The in-memory path holds the pixels once: read in place (no second copy while reading), a
cycle's sample or a rank's share read from the same tensor, and a memory budget that counts what
the path holds besides the pixels. Python-level allocations (numpy arrays, bytes) are measured with
tracemalloc; torch's own allocations are not traced, so shared tensors are checked by address."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from deepcluster.core.config import TrainConfig
from deepcluster.data.base import TensorImageDataset
from deepcluster.data.idx import IMAGES_MAGIC, read_idx
from deepcluster.data.pool_reader import IngestedDataset
from deepcluster.data.pool_writer import ingest
from deepcluster.data.source import ImageSource, choose_source, cycle_nbytes, in_memory_nbytes, source_for

from .formats import make_idx_dataset, write_idx_split

N = 3000  # 3000 × 28 × 28 = 2.2 MB of pixels: large next to everything else the calls allocate


def _traced_peak(fn):
    """``fn()`` and the peak of the Python-level memory it allocated, in bytes."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    written = make_idx_dataset(root / "idx", n_train=N, n_test=2)
    ingest(root / "idx", root / "pool", show_progress=False)
    return root / "pool", torch.from_numpy(written["train"][0]).unsqueeze(1)


def test_an_ingested_pool_is_read_into_memory_once(pool):
    root, expected = pool
    data = IngestedDataset(root)
    pixels = N * 28 * 28
    source, peak = _traced_peak(lambda: ImageSource(data, streamed=False))
    assert torch.equal(source.images, expected) and source.held_nbytes == pixels
    # the tensor itself and nothing of its size besides (the file read whole was a second copy: 2x)
    assert pixels <= peak < 1.1 * pixels
    scattered, peak = _traced_peak(lambda: data.read(np.arange(N)[::-1]))  # rows in reverse: read in pieces
    assert torch.equal(scattered, expected.flip(0)) and peak < 1.1 * pixels + (16 << 20)


def test_an_ingested_pool_keeps_no_path_per_image_until_asked(pool):
    root, _ = pool
    data = IngestedDataset(root)
    assert data.index_nbytes() == 2 * 8 * N  # its rows and labels, int64
    sub = data.subset([5, 2])
    assert sub.labels.tolist() == data.labels[[5, 2]].tolist() and sub.index_nbytes() == 2 * 8 * 2
    assert data.paths[:3] == ["#0", "#1", "#2"] and sub.paths == ["#5", "#2"]
    assert data.index_nbytes() > 2 * 8 * N  # the paths now held are counted


@pytest.mark.parametrize("gz", [True, False])
def test_idx_pixels_are_read_into_the_array_without_a_copy_of_the_file(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (N, 28, 28), dtype=np.uint8)
    write_idx_split(tmp_path, "train", images, np.zeros(N, np.uint8), gz=gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    got, peak = _traced_peak(lambda: read_idx(path, IMAGES_MAGIC, "fashion-mnist"))
    assert np.array_equal(got, images) and got.flags.writeable
    assert peak < images.nbytes + 1.2 * (1 << 20)  # the array and one 1 MB chunk being decompressed (was 2x)


def test_an_in_memory_subset_or_view_reads_the_same_tensor():
    images = torch.arange(40 * 3 * 4 * 4, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(40, 3, 4, 4)
    source = ImageSource(TensorImageDataset("t", images), streamed=False)
    pick = np.array([31, 2, 7, 7, 19, 0, 38])
    sub = source.subset(pick)
    for derived in (sub, sub.view(2, 6), sub.subset([4, 1]), source.view(5, 30), source.view(5, 30).subset([3])):
        assert derived.images.untyped_storage().data_ptr() == images.data_ptr()  # no copy, however derived
        assert derived.held_nbytes == images.nbytes and not derived.streamed
    assert len(sub) == 7 and sub.nbytes == 7 * 48
    assert torch.equal(sub.take(np.arange(7)), images[pick])
    assert torch.equal(torch.cat(list(sub.chunks(0, 7, 3))), images[pick])
    assert torch.equal(torch.cat(list(sub.chunks(2, 6, 4))), images[pick[2:6]])
    assert [b.tolist() for b in sub.batches([[6, 0], torch.tensor([3])])] == [images[pick[[6, 0]]].tolist(),
                                                                          images[pick[[3]]].tolist()]
    assert torch.equal(sub.view(2, 6).take([0, 3]), images[pick[[2, 5]]])
    assert torch.equal(sub.subset([4, 1]).take([1]), images[pick[[1]]])
    assert torch.equal(source.view(5, 30).subset([3]).take([0]), images[[8]])
    assert sub.take([]).shape == (0, 3, 4, 4) and torch.equal(sub.subset(np.arange(7) % 2 == 0).take([1]), images[[pick[2]]])


def test_the_budget_counts_what_the_in_memory_path_holds(pool):
    root, _ = pool
    data = IngestedDataset(root)
    pixels, index = N * 28 * 28, 2 * 8 * N
    assert in_memory_nbytes(data) == pixels + index and in_memory_nbytes(data, 100) == pixels + index + 100
    mb = 2**20
    # the pixels alone fit, what the path holds does not: streamed (the pixels alone used to decide)
    assert choose_source(data, memory_budget_mb=(pixels + index - 1) / mb).streamed
    assert not choose_source(data, memory_budget_mb=(pixels + index) / mb).streamed
    assert choose_source(data, memory_budget_mb=(pixels + index + 99) / mb, extra=100).streamed

    cfg = TrainConfig.model_validate({"data": {"name": "ingested"}, "pca_dim": 16, "pool_subset": 1000})
    run = cycle_nbytes(cfg, N)
    assert run == 2 * 8 * N + 1000 * (16 + 1) * 4  # two assignments per image, the sample's reduced features
    assert cycle_nbytes(cfg.model_copy(update={"pool_subset": None, "pca_dim": None}), N) == 2 * 8 * N + N * 4
    fits = (pixels + index + run) // mb + 1
    assert not source_for(cfg.model_copy(update={"data": cfg.data.model_copy(update={"memory_budget_mb": fits})}),
                          data).streamed
    tight = cfg.data.model_copy(update={"memory_budget_mb": (pixels + index + run) // mb})
    assert source_for(cfg.model_copy(update={"data": tight}), data).streamed
