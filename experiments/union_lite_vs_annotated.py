"""How far `--union lite` (NetDissect-Lite's arithmetic) moves a dissection from the default
`--union annotated`: a random small AlexNet's conv5 (128 units, 64 px) on the built-in probe.

Prints the largest IoU difference, how many units keep their best concept, and how many are
labelled (IoU >= 0.04) under each rule. Run: python experiments/union_lite_vs_annotated.py
"""

import numpy as np

from deepcluster.interpret.dissect import DissectOptions, default_concepts, dissect
from deepcluster.models import build_model

probe = default_concepts(show_progress=False)
net = build_model("small_alexnet", in_channels=3, input_size=64, sobel=False, num_classes=None, seed=0)
res = {u: dissect(net, "conv5", probe, DissectOptions(show_progress=False, union=u, device="cpu"))
       for u in ("annotated", "lite")}
a, b = res["annotated"], res["lite"]
assert a.label_names == b.label_names
col_a, best_a = a.best()
col_b, best_b = b.best()
print(f"probe: {a.n_images} images, {len(a.label_names)} concepts; {a.units} units of small AlexNet conv5 (random, seed 0)")
print(f"max |IoU annotated - IoU lite| over units x concepts: {np.abs(a.iou - b.iou).max():.4f}")
print(f"max |best IoU annotated - best IoU lite| over units: {np.abs(best_a - best_b).max():.4f}")
print(f"units with the same best concept: {(col_a == col_b).sum()} of {a.units}")
print(f"labelled (IoU >= 0.04): annotated {a.labelled().sum()}, lite {b.labelled().sum()}")
