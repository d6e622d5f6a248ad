"""Debiased linear CKA: invariances, independence, the two formulas, and `deepcluster similarity`."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from deepcluster.cli import compare as cli_compare
from deepcluster.core.errors import DataError
from deepcluster.interpret.cka import cka_matrix, linear_cka


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("debiased", [True, False])
@pytest.mark.parametrize("method", ["features", "gram"])
def test_self_similarity_is_one(debiased, method):
    x = _rng().normal(size=(60, 12))
    assert linear_cka(x, x, debiased=debiased, method=method) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("debiased", [True, False])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(debiased):
    rng = _rng(1)
    x = rng.normal(size=(80, 10))
    y = x @ rng.normal(size=(10, 15)) + 0.5 * rng.normal(size=(80, 15))
    q, _ = np.linalg.qr(rng.normal(size=(15, 15)))
    ref = linear_cka(x, y, debiased=debiased)
    assert 0.2 < ref < 1.0
    assert linear_cka(x, 3.7 * y @ q, debiased=debiased) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(0.01 * x, y, debiased=debiased) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x + 5.0, y - 2.0, debiased=debiased) == pytest.approx(ref, abs=1e-10)  # centring
    assert linear_cka(x, x @ np.linalg.qr(rng.normal(size=(10, 10)))[0] * 2.5, debiased=debiased) == pytest.approx(1.0)
    # Not invariant to an anisotropic scaling.
    assert linear_cka(x, y * np.linspace(0.1, 3, 15), debiased=debiased) != pytest.approx(ref, abs=1e-3)


def test_independent_features_debiased_near_zero():
    rng = _rng(2)
    x, y = rng.normal(size=(200, 100)), rng.normal(size=(200, 100))
    biased = linear_cka(x, y, debiased=False)
    debiased = linear_cka(x, y, debiased=True)
    assert biased > 0.2  # the plain estimator is pulled up by d/n
    assert abs(debiased) < 0.03


@pytest.mark.parametrize("debiased", [True, False])
@pytest.mark.parametrize("shape", [(50, 8, 5), (30, 70, 45), (30, 12, 90)])
def test_feature_and_gram_formulas_agree(debiased, shape):
    n, d1, d2 = shape
    rng = _rng(3)
    x = rng.normal(size=(n, d1)) + 1.0
    y = np.tanh(x[:, :1] @ rng.normal(size=(1, d2))) + rng.normal(size=(n, d2))
    a = linear_cka(x, y, debiased=debiased, method="features")
    b = linear_cka(x, y, debiased=debiased, method="gram")
    assert a == pytest.approx(b, abs=1e-9)
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(a, abs=1e-9)


def test_cka_matrix_matches_pairwise_and_mixes_representations():
    rng = _rng(4)
    n = 40
    base = rng.normal(size=(n, 6))
    fa = {"narrow": base @ rng.normal(size=(6, 10)), "wide": np.tanh(base @ rng.normal(size=(6, 90)))}  # 90 > n: Gram
    fb = {"b1": base + rng.normal(size=(n, 6)), "b2": rng.normal(size=(n, 3, 5, 5))}  # 4-D is flattened
    m = cka_matrix(fa, fb)
    assert m.shape == (2, 2)
    for i, ka in enumerate(fa):
        for j, kb in enumerate(fb):
            assert m[i, j] == pytest.approx(linear_cka(fa[ka], fb[kb], method="gram"), abs=1e-9)
    self_m = cka_matrix(fa)
    assert np.allclose(np.diag(self_m), 1.0) and np.allclose(self_m, self_m.T)
    assert self_m[0, 1] == pytest.approx(linear_cka(fa["narrow"], fa["wide"]), abs=1e-9)


def test_cka_errors():
    with pytest.raises(DataError, match="same inputs"):
        linear_cka(np.zeros((10, 2)), np.zeros((11, 2)))
    with pytest.raises(DataError, match="at least 4"):
        linear_cka(np.ones((3, 2)), np.ones((3, 2)))
    assert np.isnan(linear_cka(np.ones((10, 2)), _rng().normal(size=(10, 2))))  # a constant layer


# ---------------------------------------------------------------------------------------------
# CLI on two tiny digits runs


def _app():
    app = typer.Typer(pretty_exceptions_enable=False)
    cli_compare.register(app)
    return app


def invoke(*args):
    return CliRunner().invoke(_app(), [str(a) for a in args])


@pytest.fixture
def two_runs(digits_runs):
    return digits_runs[:2]


def test_similarity_cli(two_runs, tmp_path):
    out = tmp_path / "sim"
    res = invoke("similarity", *two_runs, "--layers", "conv1,conv2,fc2", "--sample", "150", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    assert "run_a" in res.output and "cka.csv" in res.output
    with open(out / "cka.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model_a", "layer_a", "model_b", "layer_b", "cka"]
    assert len(rows) == 6 * 5 // 2
    cross = {(r["layer_a"], r["layer_b"]): float(r["cka"]) for r in rows if r["model_a"] != r["model_b"]}
    assert len(cross) == 9 and all(-0.1 < v <= 1.0 + 1e-9 for v in cross.values())
    assert (out / "cka.png").is_file() and (out / "cka_run_a__run_b.png").is_file()


def test_similarity_cli_errors(two_runs, tmp_path):
    res = invoke("similarity", two_runs[0], "--out", tmp_path / "x")
    assert res.exit_code == 2 and "at least 2 runs" in res.output and "Traceback" not in res.output
    res = invoke("similarity", *two_runs, "--layers", "conv9", "--sample", "20", "--out", tmp_path / "x", "-q")
    assert res.exit_code == 2 and "conv9" in res.output
    other = tmp_path / "other"
    other.mkdir()
    cfg = yaml.safe_load((two_runs[1] / "config.yaml").read_text())
    cfg["data"]["image_size"] = 32
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copy(two_runs[1] / "checkpoint.pt", other / "checkpoint.pt")
    res = invoke("similarity", two_runs[0], other, "--out", tmp_path / "x", "-q")
    assert res.exit_code == 2 and "different data" in res.output and "Traceback" not in res.output
