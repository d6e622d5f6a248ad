"""Figures of the benchmarks, kept so that a slip shows (``make bench``).

Each benchmark calls :func:`record` for the figures worth following; ``run_all.py`` collects them
into ``benchmarks/results/<date>-<commit>.json`` and prints each one's change against the last
committed file. Run alone, a benchmark records nothing (``BENCH_RESULTS`` unset).

``better`` says which way is good: ``lower`` (seconds, MB) or ``higher`` (images/s, ratios against
a baseline measured in the same run -- the figures to trust on a noisy machine).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def record(name: str, value: float, unit: str, better: str = "lower", note: str = "") -> None:
    """Add one figure (``name`` unique across the benchmarks) to the collected results."""
    path = os.environ.get("BENCH_RESULTS")
    if not path:
        return
    if better not in ("lower", "higher"):
        raise ValueError(f"better={better!r}: lower or higher")
    script = Path(sys.argv[0]).name
    line = {"name": name, "value": float(value), "unit": unit, "better": better, "script": script, "note": note}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
