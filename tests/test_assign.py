"""``deepcluster assign``: new images into a run's clusters, exactly as the cycle assigned its own.

The key check: assigning a run's own training images with a checkpoint reproduces that cycle's
saved ``assignments/cycle_NNN.npy`` bit for bit (fp32), whatever the PCA, fit fraction, halting
or empty-cluster re-splits did.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from deepcluster.cluster import ClusterAssigner, Preprocessor, faiss_kmeans, kmeans, resplit_empty
from deepcluster.cluster.faiss_kmeans import _resplit_and_gather, assign_nearest
from deepcluster.core.config import TrainConfig, build_config
from deepcluster.core.errors import DataError, TrainingError
from deepcluster.core.files import torch_save
from deepcluster.data import TensorImageDataset, load_dataset
from deepcluster.data.splits import load_train_data
from deepcluster.evaluate.assign import assign_images, reshape_images
from deepcluster.runs import RunFolder
from deepcluster.train import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits_tiny.yaml"


def digits_cfg(*overrides: str) -> TrainConfig:
    return build_config(TrainConfig, CONFIG, ["threads=1", "epochs_per_cycle=1", "precision=fp32", *overrides])


def make_run(path: Path, *overrides: str) -> tuple[TrainConfig, RunFolder]:
    cfg = digits_cfg(*overrides)
    return cfg, train(cfg, path, show_progress=False)


def assert_reproduces(run: RunFolder, cfg: TrainConfig, checkpoint: str = "last") -> None:
    res = assign_images(run.path, load_train_data(cfg), checkpoint=checkpoint, show_progress=False)
    want = run.load_assignments(res.checkpoint_cycle)
    clustered = want >= 0  # Algorithm 2 (pool_subset): the cycle's sample
    np.testing.assert_array_equal(res.clusters[clustered], want[clustered])
    assert res.exact and not res.notes
    assert res.k == cfg.k
    assert np.bincount(res.clusters[clustered], minlength=cfg.k).tolist() == res.train_sizes.tolist()
    assert res.distances.shape == (len(want),) and np.isfinite(res.distances).all() and (res.distances >= 0).all()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """digits_tiny in fp32, 3 cycles, cycle 2 kept."""
    return make_run(tmp_path_factory.mktemp("assign") / "run", "cycles=3", "checkpoint_every=2")


def cli_app() -> typer.Typer:
    from deepcluster.cli import assign as assign_cli

    app = typer.Typer(add_completion=False)

    @app.callback()
    def _main() -> None:
        """The assign command alone (cli/__init__.py registers it in `deepcluster`)."""

    assign_cli.register(app)
    return app


def invoke(*args):
    return CliRunner().invoke(cli_app(), ["assign", *(str(a) for a in args)])


def assert_one_line_error(res, fragment: str) -> None:
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], res.output
    assert "Traceback" not in res.output


# --- exactness --------------------------------------------------------------------------------

def test_last_and_kept_checkpoints_reproduce_their_cycles_assignments(digits_run):
    cfg, run = digits_run
    assert_reproduces(run, cfg, "last")  # cycle 3
    assert_reproduces(run, cfg, "2")  # a kept cycle checkpoint
    clusters = run.load_checkpoint("last")["clusters"]
    assert clusters["cycle"] == 3 and clusters["precision"] == "fp32"
    # the clustered features came from the network before cycle 3's epoch: cycle 2's model, not cycle 3's
    before, after = run.load_checkpoint("2")["model"], run.load_checkpoint("last")["model"]
    assert all(torch.equal(clusters["backbone"][k], before[k]) for k in before)
    assert not all(torch.equal(clusters["backbone"][k], after[k]) for k in after)


@pytest.mark.parametrize("overrides", [("pca_dim=off",), ("fit_fraction=0.3",), ("pool_subset=700",)],
                         ids=["pca_off", "fit_fraction", "pool_subset"])
def test_reproduces_without_pca_with_a_fit_fraction_and_a_pool_sample(tmp_path, overrides):
    cfg, run = make_run(tmp_path / "run", "cycles=2", "checkpoint_every=1", *overrides)
    assert_reproduces(run, cfg, "last")
    assert_reproduces(run, cfg, "1")


def test_halted_clustering_keeps_the_last_clustering_cycle(tmp_path):
    cfg, run = make_run(tmp_path / "run", "cycles=3", "halt_clustering_after=1")
    res = assign_images(run.path, load_train_data(cfg), show_progress=False)
    assert (res.cycle, res.checkpoint_cycle) == (1, 3)
    np.testing.assert_array_equal(res.clusters, run.load_assignments(3))  # the kept pseudo-labels of cycle 1


def test_empty_cluster_resplits_are_replayed(tmp_path, monkeypatch):
    """A centroid thrown far away gets no image: the re-split that fills it is replayed on assignment."""
    fit = faiss_kmeans._fit_centroids

    def far_first_centroid(*args, **kwargs):
        centroids, splits = fit(*args, **kwargs)
        centroids = centroids.copy()
        centroids[0] = 100.0
        return centroids, splits

    monkeypatch.setattr(faiss_kmeans, "_fit_centroids", far_first_centroid)
    cfg, run = make_run(tmp_path / "run", "cycles=1")
    monkeypatch.undo()
    assert run.metrics()[0]["n_resplit"] >= 1
    assert len(run.load_checkpoint()["clusters"]["assigner"]["splits"]) >= 1
    assert_reproduces(run, cfg)


def test_pic_assigns_to_the_nearest_cluster_mean_and_says_so(tmp_path):
    cfg, run = make_run(tmp_path / "run", "cycles=1", "clustering=pic")
    res = assign_images(run.path, load_train_data(cfg), show_progress=False)
    assert res.method == "pic" and not res.exact and "nearest mean" in res.notes[0]
    agree = (res.clusters == run.load_assignments(1)).mean()
    assert agree > 0.5  # an approximation of PIC's graph clustering, not a copy


# --- the assigner alone -----------------------------------------------------------------------

def test_resplit_rules_replay_resplit_empty_and_survive_weights_only_loading(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    pre = Preprocessor(pca_dim=4, on_degenerate="truncate")
    z = pre.fit_transform(x)
    centroids = kmeans(z, 8, niter=5, seed=0).centroids.copy()
    centroids[[2, 5]] = 50.0  # two clusters nobody is nearest to
    local = assign_nearest(z, centroids)
    result = _resplit_and_gather(local, z, 8, centroids, np.random.default_rng(3), sharded=False, faiss_splits=0)
    assert len(result.splits) == 2 and (result.sizes > 0).all()
    assigner = ClusterAssigner.from_clustering(pre, result, z, method="kmeans", relu=False)
    path = tmp_path / "assigner.pt"
    torch_save(path, {"assigner": assigner.state_dict()})
    loaded = ClusterAssigner.from_state(torch.load(path, weights_only=True)["assigner"])
    ids, dist = loaded.assign(x)
    np.testing.assert_array_equal(ids, result.assignments)
    assert loaded.exact
    np.testing.assert_allclose(dist, np.linalg.norm(z - result.centroids[ids], axis=1), rtol=1e-5)
    assert (assign_nearest(z, result.centroids) != result.assignments).any()  # why the rules are kept


def test_a_split_of_identical_points_is_not_exact():
    x = np.ones((6, 2), dtype=np.float32)
    record = []
    out, _, _ = resplit_empty(np.zeros(6, dtype=np.int64), x, 2, np.zeros((2, 2)), 0, record=record)
    assert record[0]["tied"] == 3 and sorted(np.bincount(out)) == [3, 3]


# --- images in, CSV out -----------------------------------------------------------------------

def write_pngs(images: torch.Tensor, labels: np.ndarray, folder: Path) -> list[str]:
    paths = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        sub = folder / f"class_{int(lab)}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:04d}.png"
        Image.fromarray(img[0].numpy()).save(path)
        paths.append(str(path))
    return paths


def test_cli_assigns_a_folder_of_pngs_to_a_csv(digits_run, tmp_path):
    cfg, run = digits_run
    data = load_train_data(cfg)
    write_pngs(data.images[:60], data.labels[:60], tmp_path / "pngs")
    out = tmp_path / "out" / "assigned.csv"
    res = invoke(run.path, tmp_path / "pngs", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "cluster", "distance"] and len(rows) == 60
    assert all(0 <= int(r["cluster"]) < cfg.k and float(r["distance"]) >= 0 for r in rows)
    assert "60 images" in res.output and "purity" in res.output and "RGB images made gray" in res.output
    # the PNGs are the run's own images (read as RGB, made gray again): with every training image in
    # one folder, they go where the cycle put them
    whole = tmp_path / "all"
    paths = write_pngs(data.images, np.zeros(len(data), np.int64), whole)
    lib = assign_images(run.path, whole, show_progress=False)
    assert lib.paths == paths
    np.testing.assert_array_equal(lib.clusters, run.load_assignments(3))


def test_cli_reads_a_registry_dataset_and_writes_indices(digits_run, tmp_path):
    _, run = digits_run
    res = invoke(run.path, "--dataset", "digits", "--split", "test", "-q")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((run.path / "assign" / "digits_test.csv").open()))
    assert list(rows[0]) == ["index", "cluster", "distance"] and len(rows) == 297


def test_images_of_another_size_and_colour_are_matched(digits_run):
    _, run = digits_run
    test = load_dataset("digits", split="test", image_size=40)
    rgb = TensorImageDataset("rgb", test.images.expand(-1, 3, -1, -1).contiguous(), test.labels)
    res = assign_images(run.path, rgb, show_progress=False)
    assert res.n == len(test) and any("resized" in n for n in res.notes) and any("gray" in n for n in res.notes)
    gray = reshape_images(rgb.images, 1, 40)
    assert torch.equal(gray, test.images)  # gray RGB back to gray: exactly the same pixels
    with pytest.raises(DataError, match="uint8 N×C×H×W"):
        assign_images(run.path, torch.zeros(2, 4, 28, 28, dtype=torch.uint8), show_progress=False)


def test_user_errors_are_one_line(digits_run, tmp_path):
    _, run = digits_run
    assert_one_line_error(invoke(run.path, tmp_path / "missing"), "does not exist")
    assert_one_line_error(invoke(run.path, tmp_path / "missing", "--checkpoint", "init"), "no clusters")
    assert_one_line_error(invoke(tmp_path / "not_a_run", tmp_path), "does not exist")
    # a damaged checkpoint: k does not match the centroids
    copy = tmp_path / "damaged"
    shutil.copytree(run.path, copy)
    ckpt = RunFolder(copy).load_checkpoint("last")
    ckpt["assignments"] = torch.from_numpy(ckpt["assignments"])
    ckpt["clusters"]["assigner"]["k"] = 7
    torch_save(copy / "checkpoint.pt", ckpt)
    assert_one_line_error(invoke(copy, "--dataset", "digits"), "k=7")


def test_an_old_run_without_clusters_gives_the_clear_error(digits_run, tmp_path):
    _, run = digits_run
    old = tmp_path / "old"
    shutil.copytree(run.path, old)
    ckpt = RunFolder(old).load_checkpoint("last")
    ckpt["assignments"] = torch.from_numpy(ckpt["assignments"])
    del ckpt["clusters"]
    torch_save(old / "checkpoint.pt", ckpt)
    with pytest.raises(TrainingError, match="trained by an older deepcluster"):
        assign_images(old, dataset="digits", show_progress=False)
    res = invoke(old, "--dataset", "digits", "--split", "test")
    assert_one_line_error(res, "this run was trained by an older deepcluster; its checkpoints keep no clusters")


def test_a_supervised_run_has_no_clusters(tmp_path):
    _, run = make_run(tmp_path / "run", "cycles=1", "supervised=true")
    assert run.load_checkpoint()["clusters"] is None
    with pytest.raises(TrainingError, match="never clustered"):
        assign_images(run.path, dataset="digits", split="test", show_progress=False)


@pytest.mark.slow
def test_a_run_of_two_processes_is_reproduced_by_one(tmp_path):
    """Under torchrun each rank read its own share of the images in batches: assign reads them alike."""
    import os
    import subprocess
    import sys

    out = tmp_path / "two"
    env = {**os.environ, "DEEPCLUSTER_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "deepcluster", "train", "-c", str(CONFIG), "--set", "model.arch=lenet5", "--set",
                          "precision=fp32", "--set", "k=10", "--set", "cycles=2", "-o", str(out), "-q"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    run = RunFolder(out)
    assert run.load_checkpoint()["clusters"]["processes"] == 2
    res = assign_images(out, load_train_data(run.load_config()), show_progress=False)
    np.testing.assert_array_equal(res.clusters, run.load_assignments(2))
