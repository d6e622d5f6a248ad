"""DeepCluster on the real Fashion-MNIST learns something its random initialisation does not know."""

from pathlib import Path

import pytest

from deepcluster.config import TrainConfig, build_config
from deepcluster.data import dataset_stats
from deepcluster.evaluate.run_eval import clustering_quality
from deepcluster.train import load_train_data, train

CONFIG = Path(__file__).parents[2] / "configs" / "fmnist_lenet.yaml"


@pytest.mark.slow
def test_training_raises_nmi_to_labels_above_the_random_network(fmnist_dir, tmp_path):
    cfg = build_config(TrainConfig, CONFIG, [f"data.root={fmnist_dir}", "data.limit=10000", "cycles=6"])
    run = train(cfg, tmp_path / "run", show_progress=False)
    data = load_train_data(cfg)
    images, stats = data.images_tensor(), dataset_stats("fashion-mnist")

    random = clustering_quality(run.build_model("init"), images, data.labels, cfg, stats)
    trained = clustering_quality(run.build_model("last"), images, data.labels, cfg, stats)
    print(f"NMI to labels: random {random['nmi']:.3f}, trained {trained['nmi']:.3f}")
    assert trained["nmi"] > random["nmi"] + 0.02
    # training's own pseudo-labels end closer to the classes than the random network's clusters
    assert run.metrics()[-1]["nmi_labels"] > random["nmi"]
