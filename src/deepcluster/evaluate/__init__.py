"""Evaluation of learned features: linear probes, kNN, low-shot, clustering metrics over cycles.

:func:`evaluate_and_write` is what ``deepcluster evaluate`` and the report run:
:func:`evaluate_suite` (the protocols for runs × checkpoints × layers, with a per-number cache)
and every output file. :func:`evaluate_run` is the quick single-checkpoint evaluation (L-BFGS
probe, one k) that studies use. The two linear probes live in :mod:`.sgd_probe` (the official
``eval_linear`` protocol) and :mod:`.lbfgs_probe` (:func:`linear_probe`, full-batch L-BFGS).
"""

from deepcluster.evaluate.cache import EvalCache
from deepcluster.evaluate.cycles import cycle_metrics
from deepcluster.evaluate.export import export_run
from deepcluster.evaluate.knn import knn_accuracies, knn_accuracy
from deepcluster.evaluate.lbfgs_probe import ProbeResult, linear_probe
from deepcluster.evaluate.lowshot import LowShotResult, lowshot_accuracy
from deepcluster.evaluate.pooling import (
    extract_pooled_features,
    pool_to_budget,
    pooled_side,
)
from deepcluster.evaluate.run_eval import evaluate_run
from deepcluster.evaluate.sgd_probe import SGDProbeResult, sgd_linear_probe
from deepcluster.evaluate.suite import (
    SuiteOutput,
    evaluate_and_write,
    evaluate_suite,
    suite_cycle_metrics,
    write_suite_outputs,
)
from deepcluster.evaluate.tables import pivot_tables

__all__ = [
    "EvalCache",
    "LowShotResult",
    "ProbeResult",
    "SGDProbeResult",
    "SuiteOutput",
    "cycle_metrics",
    "evaluate_and_write",
    "evaluate_run",
    "evaluate_suite",
    "export_run",
    "extract_pooled_features",
    "knn_accuracies",
    "knn_accuracy",
    "linear_probe",
    "lowshot_accuracy",
    "pivot_tables",
    "pool_to_budget",
    "pooled_side",
    "sgd_linear_probe",
    "suite_cycle_metrics",
    "write_suite_outputs",
]
