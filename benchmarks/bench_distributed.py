"""One DeepCluster cycle of LeNet-5 on all 60,000 Fashion-MNIST images with 1 and with 2 processes
(`deepcluster train --nproc N`, torchrun, gloo), side by side: seconds per phase, the whole
command's wall time, and the bytes each rank sends per cycle (clustering collectives + DDP's
gradient all-reduces). On a 2-core machine two processes share the same cores, so expect little
or no gain; the point is that the same command scales out on more cores, GPUs or machines.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import record as record_figure

ROOT = os.environ.get("FMNIST", "/usr/share/datasets/fashion-mnist")
env = {**os.environ, "DEEPCLUSTER_PROGRESS": "0"}
rows = {}
with tempfile.TemporaryDirectory() as tmp:
    for nproc in (1, 2):
        out = Path(tmp) / f"n{nproc}"
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "deepcluster", "train", "-c", "configs/fmnist_lenet.yaml",
                              "--set", f"data.root={ROOT}", "--set", "cycles=1", "-o", str(out), "-q",
                              "--nproc", str(nproc)], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        if res.returncode:
            print(res.stdout + res.stderr)
            sys.exit(1)
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        rows[nproc] = (record, wall)
for nproc, (record, wall) in rows.items():
    secs = record["seconds"]
    sent = record.get("bytes_sent")
    print(f"{nproc} process{'es' if nproc > 1 else ''}: " + ", ".join(f"{k} {v:.2f}" for k, v in secs.items())
          + f"; cycle {sum(secs.values()):.2f} s, command {wall:.1f} s (start-up and data loading included)"
          + (f"; rank 0 sent {sent / 2**20:.1f} MiB this cycle" if sent else ""))
one, two = (sum(rows[n][0]["seconds"].values()) for n in (1, 2))
print(f"cycle time 2 vs 1 processes: x{one / two:.2f}")
record_figure("distributed.cycle_1proc_over_2proc", one / two, "x", better="higher")
