import pytest

from deepcluster.core.errors import DataError, DeepClusterError
from deepcluster.data import DEFAULT_ROOTS, ImageDataset, available_datasets, dataset_stats, load_dataset


def test_available_datasets():
    names = available_datasets()
    assert names == ["fashion-mnist", "mnist", "cifar10", "svhn", "folder", "ingested", "digits"]
    assert DEFAULT_ROOTS["fashion-mnist"] == "/usr/share/datasets/fashion-mnist"


def test_unknown_name_lists_choices():
    with pytest.raises(DataError, match="unknown dataset 'imagenet': choose one of fashion-mnist, mnist, cifar10"):
        load_dataset("imagenet")


def test_bad_split():
    with pytest.raises(DataError, match="unknown split 'val'.*'train' or 'test'"):
        load_dataset("digits", split="val")


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"limit": -3}, {"limit": 2.5}, {"image_size": 0}])
def test_bad_limit_or_size(kwargs):
    with pytest.raises(DataError, match="positive integer"):
        load_dataset("digits", **kwargs)


def test_aliases_and_isinstance():
    ds = load_dataset("DIGITS", limit=3)
    assert isinstance(ds, ImageDataset) and ds.name == "digits"
    assert dataset_stats("FMNIST") == dataset_stats("fashion-mnist")
    assert "digits" in repr(ds)


def test_stats_have_one_value_per_channel():
    for name in available_datasets():
        mean, std = dataset_stats(name)
        assert len(mean) == len(std) and len(mean) in (1, 3)
        assert all(0 < v < 1 for v in mean + std)
    assert len(dataset_stats("cifar10")[0]) == 3 and dataset_stats("folder") == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(DataError, match="unknown dataset"):
        dataset_stats("nope")


def test_data_error_is_a_deepcluster_error():
    assert issubclass(DataError, DeepClusterError)


def test_limit_seed_changes_subset():
    a = load_dataset("digits", limit=20, seed=0)
    b = load_dataset("digits", limit=20, seed=1)
    assert a.labels.tolist() != b.labels.tolist() or not (a.images_tensor() == b.images_tensor()).all()
