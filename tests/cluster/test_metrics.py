"""nmi, ari, clustering_accuracy, cluster_size_summary against known answers."""

import numpy as np
import pytest

from deepcluster.cluster import ari, cluster_size_summary, clustering_accuracy, nmi

LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
PERMUTED = np.array([2, 2, 2, 0, 0, 0, 1, 1, 1])


def test_identical_and_permuted_labellings_agree_fully():
    for other in (LABELS, PERMUTED):
        assert nmi(LABELS, other) == pytest.approx(1.0)
        assert ari(LABELS, other) == pytest.approx(1.0)
        assert clustering_accuracy(LABELS, other) == pytest.approx(1.0)


def test_independent_labellings():
    a = np.array([0, 0, 1, 1])
    b = np.array([0, 1, 0, 1])
    assert nmi(a, b) == pytest.approx(0.0, abs=1e-12)
    assert ari(a, b) == pytest.approx(-0.5)  # sklearn's value for this 2x2 case


def test_clustering_accuracy_hand_example():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    clusters = np.array([5, 5, 5, 7, 7, 7, 7, 9, 9, 5])
    # Best matching: 5->0 (3), 7->1 (3), 9->2 (2) = 8 of 10.
    assert clustering_accuracy(labels, clusters) == pytest.approx(0.8)


def test_clustering_accuracy_with_more_clusters_than_classes():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    clusters = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    # Only two clusters can be matched: 0|1 -> class 0 (2), 2 -> class 1 (3).
    assert clustering_accuracy(labels, clusters) == pytest.approx(5 / 8)


def test_clustering_accuracy_with_fewer_clusters_than_classes():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert clustering_accuracy(labels, np.zeros(6, dtype=int)) == pytest.approx(2 / 6)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="different lengths"):
        nmi([0, 1], [0, 1, 2])


def test_cluster_size_summary():
    s = cluster_size_summary(np.array([3, 0, 10, 5, 0]))
    assert s == {"min": 0, "median": 3.0, "max": 10, "empty": 2}
    assert cluster_size_summary(np.array([4, 6])) == {"min": 4, "median": 5.0, "max": 6, "empty": 0}
