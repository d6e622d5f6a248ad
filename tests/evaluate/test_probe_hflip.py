"""eval.probe_hflip: the SGD probe trains on horizontally flipped images for half of each batch,
as the Deep Dive authors' probe (RandomHorizontalFlip); the study's quick evaluation honours the
spec's probe."""

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from deepcluster.core.config import EvalConfig, TrainConfig, build_config
from deepcluster.core.errors import ConfigError, DataError
from deepcluster.data.base import TensorImageDataset
from deepcluster.data.source import ImageSource
from deepcluster.evaluate import evaluate_run, evaluate_suite, sgd_linear_probe

from .conftest import CONFIG


def _digits():
    d = load_digits()
    images = torch.from_numpy((d.images * 255 / 16).astype(np.uint8))[:, None]  # N×1×8×8
    return images, d.target


def test_flip_augmentation_makes_the_probe_read_mirrored_digits():
    """Raw pixels of 8×8 digits: a probe trained on the upright images only fails on mirrored test
    digits; trained with flips it reads them (and still reads the upright ones)."""
    images, y = _digits()
    px = images.flatten(1).float().numpy() / 255
    flipped = images.flip(-1).flatten(1).float().numpy() / 255
    tr, te = slice(0, 1400), slice(1400, None)
    kw = {"epochs": 15, "lr": 0.05, "seed": 0}
    plain = sgd_linear_probe((px[tr], y[tr]), (flipped[te], y[te]), **kw)
    aug = sgd_linear_probe((px[tr], y[tr]), (flipped[te], y[te]), flipped=flipped[tr], **kw)
    upright = sgd_linear_probe((px[tr], y[tr]), (px[te], y[te]), flipped=flipped[tr], **kw)
    assert plain.last_acc < 0.5 < 0.75 < aug.last_acc  # measured: 0.41 and 0.81
    assert upright.last_acc > 0.75  # 0.82 (0.87 without flips: one linear map now reads both)
    again = sgd_linear_probe((px[tr], y[tr]), (flipped[te], y[te]), flipped=flipped[tr], **kw)
    assert again == aug  # the flips are drawn from the seed
    with pytest.raises(DataError, match="flipped features"):
        sgd_linear_probe((px[tr], y[tr]), (px[te], y[te]), flipped=flipped[:10])


def test_a_flipped_source_mirrors_every_read(tmp_path):
    images, _ = _digits()
    src = ImageSource(TensorImageDataset("digits", images[:100]))
    mirror = src.flipped()
    assert torch.equal(mirror.take([3, 7]), images[[3, 7]].flip(-1))
    assert torch.equal(torch.cat(list(mirror.chunks(0, 100, 32))), images[:100].flip(-1))
    assert torch.equal(torch.cat(list(mirror.batches([[1, 2], [5]]))), images[[1, 2, 5]].flip(-1))
    assert torch.equal(mirror.view(10, 20).take([0]), images[10:11].flip(-1))
    assert torch.equal(mirror.flipped().take([4]), images[[4]])
    assert torch.equal(src.take([3]), images[[3]])  # the source itself is unchanged
    streamed = ImageSource(TensorImageDataset("digits", images[:100]), streamed=True, workers=0).flipped()
    assert torch.equal(torch.cat(list(streamed.chunks(0, 100, 40))), images[:100].flip(-1))


def test_hflip_needs_the_sgd_probe():
    assert EvalConfig(probe_hflip=True).probe_hflip
    with pytest.raises(ValueError, match="probe=sgd"):
        EvalConfig(probe="lbfgs", probe_hflip=True)


def test_the_suite_extracts_flipped_features_and_keys_the_cache_by_it(tiny_run):
    def linear(ecfg):
        rows = evaluate_suite([tiny_run], ["last"], ["fc2"], ["linear"], eval_cfg=ecfg, pixel_baseline=False,
                              show_progress=False)
        return {r["metric"]: r for r in rows}

    fast = {"probe_epochs": 3}
    plain = linear(fast)
    flipped = linear({**fast, "probe_hflip": True})
    assert flipped["last_acc"]["source"] == "computed"  # not the unflipped probe's cached number
    assert flipped["last_acc"]["value"] != plain["last_acc"]["value"]
    assert linear({**fast, "probe_hflip": True})["last_acc"]["source"] == "cache"
    assert linear(fast)["last_acc"]["source"] == "cache"  # the earlier key is unchanged
    with pytest.raises(ConfigError, match="probe=sgd"):
        evaluate_suite([tiny_run], ["last"], ["fc2"], ["linear"], eval_cfg={"probe": "lbfgs", "probe_hflip": True},
                       show_progress=False)


def test_the_quick_evaluation_uses_the_probe_it_is_given(tiny_run):
    cfg = build_config(TrainConfig, CONFIG, [])
    quick = evaluate_run(tiny_run, compare_random=False, show_progress=False, out=tiny_run / "q1")
    assert quick["models"]["trained"]["layers"]["fc2"]["probe"] == "lbfgs"  # the default: converged L-BFGS
    ecfg = cfg.eval.model_copy(update={"probe": "sgd", "probe_epochs": 3, "probe_hflip": True, "layers": ["fc2"]})
    sgd = evaluate_run(tiny_run, ecfg, compare_random=False, show_progress=False, out=tiny_run / "q2")
    layer = sgd["models"]["trained"]["layers"]["fc2"]
    assert layer["probe"] == "sgd" and 0.3 < layer["linear"] <= 1
    saved = json.loads((tiny_run / "q2" / "evaluation_last.json").read_text())
    assert saved["config"]["probe_hflip"] is True


def test_a_study_probes_with_l_bfgs_unless_its_spec_asks_for_sgd():
    from deepcluster.analysis.study import load_spec
    from deepcluster.analysis.study_spec import eval_config

    cfg = build_config(TrainConfig, CONFIG, [])
    spec = load_spec(CONFIG.parent / "papers" / "deep_dive_fmnist_halting.yaml")
    ecfg = eval_config(spec, cfg, "conv2_prepool")
    assert (ecfg.probe, ecfg.probe_epochs, ecfg.probe_hflip) == ("sgd", 20, True)  # the authors' probe
    plain = eval_config(spec.model_copy(update={"eval": {}}), cfg, "conv2_prepool")
    assert plain.probe == "lbfgs" and not plain.probe_hflip
