"""Network dissection: `deepcluster dissect` of a random LeNet-5 conv2 (16 units, 28 px grey input)
and a random small AlexNet conv5 (128 units, 64 px RGB input) on the built-in concept probe
(1000 images of 64 px, 105 concepts), run in-process through the command, timed end to end
(model loading, both passes, tally/summary/page writing; not the interpreter's start-up).

The probe is generated first into a temporary cache (timed apart), as `deepcluster dissect` does
once per machine. ``DISSECT_SKETCH=1`` also times small AlexNet conv5 with the histogram
(sketch) thresholds and compares them with the exact ones.
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import typer
from _results import record
from typer.testing import CliRunner

from deepcluster.cli.interpret import register
from deepcluster.interpret.dissect import default_concepts

tmp = Path(tempfile.mkdtemp(prefix="bench_dissect_"))
os.environ["DEEPCLUSTER_CACHE"] = str(tmp / "cache")
(tmp / "bench_nets.py").write_text(
    "from deepcluster.models import build_model\n"
    "lenet = build_model('lenet5', in_channels=1, input_size=28, sobel=False, num_classes=None, seed=0)\n"
    "alexnet = build_model('small_alexnet', in_channels=3, input_size=64, sobel=False, num_classes=None, seed=0)\n"
)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.callback()(lambda: None)
register(app)
runner = CliRunner()
threads = torch.get_num_threads()
print(f"torch threads: {threads}, device: {'cuda' if torch.cuda.is_available() else 'cpu'}")

t = time.perf_counter()
probe = default_concepts(show_progress=False)
print(f"built-in probe (1000 images, 64 px): generated in {time.perf_counter() - t:.1f} s")


def run(name: str, spec: str, layer: str, *extra: str) -> dict:
    out = tmp / name.replace(" ", "_")
    t = time.perf_counter()
    res = runner.invoke(app, ["dissect", f"{tmp / 'bench_nets.py'}:{spec}", "--layer", layer, "--out", str(out), "-q", *extra])
    wall = time.perf_counter() - t
    if res.exit_code != 0:
        raise SystemExit(f"{name} failed: {res.output}")
    s = json.loads((out / "summary.json").read_text())
    ti = s["timings_s"]
    print(f"{name}: {s['n_units']} units, maps {s['feature_shape'][0]}x{s['feature_shape'][1]}, "
          f"{s['n_labelled']} labelled: `deepcluster dissect` {wall:.1f} s (thresholds {ti['thresholds']:.1f} s, "
          f"IoU {ti['iou']:.1f} s, page {ti['report']:.1f} s; {s['quantile_method']} quantiles)")
    record(f"dissect.{name.replace(' ', '_')}.s", wall, "s")
    return s


run("lenet5 conv2", "lenet", "conv2", "--input-size", "28")
run("small_alexnet conv5", "alexnet", "conv5")
# On a busy 2-core machine PyTorch's threads wait on each other; one thread is often faster.
run("lenet5 conv2 --threads 1", "lenet", "conv2", "--input-size", "28", "--threads", "1")
run("small_alexnet conv5 --threads 1", "alexnet", "conv5", "--threads", "1")
if os.environ.get("DISSECT_SKETCH") == "1":
    run("small_alexnet conv5 sketch", "alexnet", "conv5", "--method", "sketch", "--threads", str(threads))
    a = np.load(tmp / "small_alexnet_conv5" / "thresholds.npy")
    b = np.load(tmp / "small_alexnet_conv5_sketch" / "thresholds.npy")
    print(f"sketch vs exact thresholds: max |diff| {np.abs(a - b).max():.2e} (max |threshold| {np.abs(a).max():.2e})")
shutil.rmtree(tmp, ignore_errors=True)
