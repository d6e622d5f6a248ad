"""Run by tests/test_distributed_world.py under torchrun: init_from_main and gather_rows.

Rank 0 alone "reads" the settings (a file only it is told about); every rank must come out with
rank 0's payload and a process group holding rank 0's timeout. Then rows of uneven shares (one
rank has none) are gathered on rank 0 in small rounds, into memory and into a memory-mapped file.
"""

import json
import sys
from pathlib import Path

import numpy as np

from deepcluster.core import distributed

out = Path(sys.argv[1])
reads = []


def read():
    reads.append(1)
    return {"secret": 42}, "gloo", "cpu", 37.0


world, payload = distributed.init_from_main(read)
distributed.GATHER_ROUND_BYTES = 3 * 5 * 4  # 3 rows of 5 float32 per round: several rounds
sizes = [7, 0, 4][: world.size]  # rank 1 has no rows
rows = np.arange(world.rank * 100, world.rank * 100 + sizes[world.rank] * 5, dtype=np.float32).reshape(-1, 5)
before = distributed.bytes_sent()
gathered = distributed.gather_rows(rows)
sent = distributed.bytes_sent() - before
mapped = distributed.gather_rows(rows, out=lambda shape, dtype: np.lib.format.open_memmap(
    out / "mapped.npy", mode="w+", shape=shape, dtype=dtype))
record = {"rank": world.rank, "payload": payload, "reads": len(reads), "timeout": world.timeout_s,
          "backend": world.backend, "gathered_is_none": gathered is None, "sent": sent}
(out / f"rank{world.rank}.json").write_text(json.dumps(record))
if world.is_main:
    expected = np.concatenate([np.arange(r * 100, r * 100 + n * 5, dtype=np.float32).reshape(-1, 5)
                               for r, n in enumerate(sizes)])
    np.testing.assert_array_equal(gathered, expected)
    mapped.flush()
    np.testing.assert_array_equal(np.load(out / "mapped.npy"), expected)
distributed.shutdown()
