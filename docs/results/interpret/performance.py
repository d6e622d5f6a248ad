"""Downstream results of the dissected models, for `deepcluster lce --performance`.

Linear probe (last epoch) and 20-NN test accuracy of the dissected layer of each model, from
the evaluation suite (cached in each run's eval/cache). Run from the repository root:

    python docs/results/interpret/performance.py > docs/results/interpret/performance.csv
"""

import csv
import sys

from deepcluster.evaluate import evaluate_suite

# model name (as given to `deepcluster lce --name`), run folder, checkpoint, layer
MODELS = [
    ("lenet_random", "runs/demo", "init", "conv2"),
    ("lenet_deepcluster", "runs/demo", "last", "conv2"),
    ("lenet_deepcluster_s1", "runs/lenet_dc_s1", "last", "conv2"),
    ("lenet_supervised", "runs/lenet_sup", "last", "conv2"),
    ("salex_random", "runs/salex_dc", "init", "conv5"),
    ("salex_deepcluster", "runs/salex_dc", "last", "conv5"),
    ("salex_supervised", "runs/salex_sup", "last", "conv5"),
]

out = csv.writer(sys.stdout)
out.writerow(["model", "linear_acc", "knn20_acc"])
for name, run, checkpoint, layer in MODELS:
    rows = evaluate_suite([run], checkpoints=[checkpoint], layers=[layer], protocols=["linear", "knn"],
                          pixel_baseline=False, show_progress=False)
    value = {(r["protocol"], r["metric"]): r["value"] for r in rows}
    linear, knn = value[("linear", "last_acc")], value[("knn", "k=20")]
    out.writerow([name, f"{linear:.4f}", f"{knn:.4f}"])
    sys.stdout.flush()
