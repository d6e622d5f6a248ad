import os
import tempfile

os.environ.setdefault("DEEPCLUSTER_PROGRESS", "0")
# precision: auto keeps what it measured per machine; the suite keeps its own (one per session)
os.environ.setdefault("DEEPCLUSTER_CACHE_DIR", tempfile.mkdtemp(prefix="deepcluster-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # CI machines have 2 cores; keep results independent of the machine's thread count.
    torch.set_num_threads(2)


@pytest.fixture
def fmnist_dir():
    if not os.path.exists(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz")):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return FMNIST_DIR
