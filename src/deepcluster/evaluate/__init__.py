"""Evaluation of learned features: linear probes, kNN, clustering metrics."""

from deepcluster.evaluate.export import export_run
from deepcluster.evaluate.knn import knn_accuracy
from deepcluster.evaluate.linear_probe import ProbeResult, linear_probe
from deepcluster.evaluate.run_eval import evaluate_run

__all__ = ["ProbeResult", "evaluate_run", "export_run", "knn_accuracy", "linear_probe"]
