"""Per-number cache of the evaluation suite: small JSON files under ``RUN/eval/cache``.

    RUN/eval/cache/<checkpoint>/<layer>/<protocol>-<hash>.json

The hash covers everything the number depends on: the protocol's parameters, the data (dataset,
splits, limits, seed), the pooling budget, and the identity of the checkpoint file (its size and
modification time in nanoseconds), so retraining or resuming a run (which rewrites
``checkpoint.pt``) makes the old entries unreachable instead of wrong. Entries are written
atomically; an unreadable one counts as missing and is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from deepcluster.core.files import write_json

#: Bumped when a protocol's implementation changes its numbers: every old entry becomes a miss.
CACHE_FORMAT = 1


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of a file that changes whenever it is rewritten: name, size, mtime in ns."""
    st = path.stat()
    return {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def params_hash(params: dict[str, Any]) -> str:
    """Short stable hash of JSON-serialisable ``params`` (key order does not matter)."""
    blob = json.dumps({"format": CACHE_FORMAT, **params}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", str(name)) or "_"


class EvalCache:
    """JSON cache of evaluation numbers of one run.

    Parameters
    ----------
    root : Path
        Cache folder, normally ``RUN/eval/cache``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_run(cls, run_dir: str | Path) -> EvalCache:
        """The cache of the run in ``run_dir`` (``RUN/eval/cache``)."""
        return cls(Path(run_dir) / "eval" / "cache")

    def path(self, checkpoint: str, layer: str, protocol: str, params: dict[str, Any]) -> Path:
        """Where the entry for these arguments lives (whether or not it exists)."""
        return self.root / _safe(checkpoint) / _safe(layer) / f"{_safe(protocol)}-{params_hash(params)}.json"

    def get(self, checkpoint: str, layer: str, protocol: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """The stored entry (``result``, ``seconds``, ``params``...), or ``None`` when missing or unreadable."""
        path = self.path(checkpoint, layer, protocol, params)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and "result" in entry else None

    def put(self, checkpoint: str, layer: str, protocol: str, params: dict[str, Any], result: dict[str, Any],
            *, seconds: float = 0.0, extra: dict[str, Any] | None = None) -> Path:
        """Store ``result`` atomically and return the file's path."""
        path = self.path(checkpoint, layer, protocol, params)
        write_json(path, {"checkpoint": checkpoint, "layer": layer, "protocol": protocol, "params": params,
                          "result": result, "seconds": round(seconds, 3), **(extra or {}),
                          "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return path

