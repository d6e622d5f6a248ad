import json

import numpy as np
import pytest

from deepcluster.core.errors import DataError
from deepcluster.core.files import save_npy
from deepcluster.evaluate import cycle_metrics
from deepcluster.evaluate.cycles import run_train_labels


def test_cycle_metrics_match_the_training_log(tiny_run):
    rows = cycle_metrics(tiny_run)
    logged = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["cycle"] for r in rows] == [1, 2]
    assert rows[0]["nmi_prev"] is None and rows[1]["prev_cycle"] == 1
    for row, rec in zip(rows, logged):
        assert row["n"] == 400 and row["clusters"] == rec["k"]
        assert row["nmi"] == pytest.approx(rec["nmi_labels"]) and row["ari"] == pytest.approx(rec["ari_labels"])
        assert row["acc"] == pytest.approx(rec["acc_labels"])
        assert row["size_min"] == rec["cluster_sizes"]["min"] and row["size_max"] == rec["cluster_sizes"]["max"]
    assert rows[1]["nmi_prev"] == pytest.approx(logged[1]["nmi_prev"])


def test_permuted_labelling_is_perfect_and_labels_are_optional(tiny_run):
    labels = run_train_labels(tiny_run)
    perm = np.random.default_rng(0).permutation(10)
    save_npy(tiny_run / "assignments" / "cycle_003.npy", perm[labels])
    save_npy(tiny_run / "assignments" / "cycle_004.npy", perm[labels])
    rows = cycle_metrics(tiny_run)
    assert [r["cycle"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["acc"] == 1.0 and rows[2]["nmi"] == pytest.approx(1.0) and rows[2]["ari"] == pytest.approx(1.0)
    assert rows[3]["nmi_prev"] == pytest.approx(1.0)

    free = cycle_metrics(tiny_run, labels=None)
    assert all(r["nmi"] is None and r["acc"] is None for r in free)
    assert [r["nmi_prev"] for r in free] == [r["nmi_prev"] for r in rows]


def test_labels_of_other_images_are_refused(tiny_run):
    with pytest.raises(DataError, match="400 assignments"):
        cycle_metrics(tiny_run, labels=np.zeros(399, dtype=np.int64))


def test_a_run_without_cycles_has_no_rows(tiny_run):
    for p in (tiny_run / "assignments").glob("*.npy"):
        p.unlink()
    assert cycle_metrics(tiny_run) == []
