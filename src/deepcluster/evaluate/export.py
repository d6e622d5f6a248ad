"""Export features and cluster assignments of a run for downstream use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepcluster.core.files import save_npy, write_csv, write_json
from deepcluster.data.splits import load_split
from deepcluster.environment import RunEnv
from deepcluster.features import extract_features
from deepcluster.runs import RunFolder


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    checkpoint: str = "last",
    layer: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Write ``features.npy`` (training split, in dataset order) and ``assignments.csv``.

    ``layer=None`` exports the clustering features (trunk output before the last ReLU);
    otherwise a named probe layer, flattened. The CSV maps each sample (its file path for
    folder datasets, else its index) to its cluster id in the last saved assignment: -1 for the
    images a run with ``pool_subset`` (Caron's Algorithm 2) did not cluster in that cycle.
    """
    run = RunFolder(Path(run_dir)).require()
    cfg = run.load_config()
    out_dir = Path(out) if out is not None else run.path / "export"
    model = run.build_model(checkpoint, cfg)  # bad checkpoints and assignments fail before any work
    assignments = run.load_assignments()
    data = load_split(cfg)
    images = data.images_tensor()
    env = RunEnv.from_config(cfg, show_progress=show_progress)
    model.to(env.device)
    feats = extract_features(model, images, env.features(int(images.shape[1])),
                             layers=None if layer is None else [layer], description="export features")
    x = next(iter(feats.values()))
    save_npy(out_dir / "features.npy", x)
    key = "path" if data.paths is not None else "index"
    names = data.paths if data.paths is not None else range(len(assignments))
    write_csv(out_dir / "assignments.csv", zip(names, assignments.tolist()), [key, "cluster"])
    summary = {"run": str(run.path), "checkpoint": checkpoint, "layer": layer or "embed",
               "features": str(out_dir / "features.npy"), "shape": list(x.shape),
               "assignments": str(out_dir / "assignments.csv"), "n_clusters": int(np.unique(assignments[assignments >= 0]).size),
               "assignment_cycle": run.assignment_cycles()[-1]}
    write_json(out_dir / "export.json", summary)
    return summary

