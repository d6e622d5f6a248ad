"""Export features and cluster assignments of a run for downstream use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepcluster.core.errors import TrainingError
from deepcluster.core.files import save_npy, write_csv, write_json
from deepcluster.data.splits import load_split
from deepcluster.environment import RunEnv
from deepcluster.features import extract_features
from deepcluster.runs import RunFolder


def checkpoint_assignments(run: RunFolder, checkpoint: str) -> tuple[int, np.ndarray | None]:
    """The cycle of ``checkpoint`` and that cycle's assignments (``assignments/cycle_C.npy``, else the
    copy in the checkpoint); ``(0, None)`` for ``init``, which has no clusters.

    Raises
    ------
    TrainingError
        If a trained checkpoint's cycle has no saved assignments.
    """
    ckpt = run.load_checkpoint(checkpoint)
    cycle = int(ckpt.get("cycle", 0))
    if cycle == 0:
        return 0, None
    if run.assignments_path(cycle).is_file():
        return cycle, np.asarray(run.load_assignments(cycle))
    if "assignments" in ckpt:
        return cycle, np.asarray(ckpt["assignments"], dtype=np.int64)
    raise TrainingError(f"{run.assignments_path(cycle)} not found and checkpoint {checkpoint} keeps no copy: "
                        f"export another checkpoint (cycles with assignments: {run.assignment_cycles()})")


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
    folder datasets, else its index) to its cluster id in the assignment of the checkpoint's own
    cycle (``assignments/cycle_C.npy``; ``last``: the last finished cycle): -1 for the images a
    run with ``pool_subset`` (Caron's Algorithm 2) did not cluster in that cycle. ``init`` (the
    random network, before any clustering) has no assignments: only the features are written, and
    an ``assignments.csv`` left in ``out`` by an earlier export is removed, so that it cannot be
    read as this checkpoint's. The summary's ``assignments`` is then ``None``.
    """
    run = RunFolder(Path(run_dir)).require()
    cfg = run.load_config()
    out_dir = Path(out) if out is not None else run.path / "export"
    model = run.build_model(checkpoint, cfg)  # bad checkpoints and assignments fail before any work
    cycle, assignments = checkpoint_assignments(run, checkpoint)
    data = load_split(cfg)
    if assignments is not None and len(assignments) != len(data):
        raise TrainingError(f"{run.assignments_path(cycle)} has {len(assignments):,} entries but the run's data has "
                            f"{len(data):,} images: the dataset changed since training; point --data-root at the "
                            "original images")
    images = data.images_tensor()
    env = RunEnv.from_config(cfg, show_progress=show_progress)
    model.to(env.device)
    feats = extract_features(model, images, env.features(int(images.shape[1])),
                             layers=None if layer is None else [layer], description="export features")
    x = next(iter(feats.values()))
    save_npy(out_dir / "features.npy", x)
    csv_path = out_dir / "assignments.csv"
    summary = {"run": str(run.path), "checkpoint": checkpoint, "layer": layer or "embed",
               "features": str(out_dir / "features.npy"), "shape": list(x.shape), "assignment_cycle": cycle or None}
    if assignments is None:
        csv_path.unlink(missing_ok=True)
        summary.update(assignments=None, n_clusters=0,
                       note=f"checkpoint {checkpoint} is the random initialisation: no clusters yet, features only")
    else:
        key = "path" if data.paths is not None else "index"
        names = data.paths if data.paths is not None else range(len(assignments))
        write_csv(csv_path, zip(names, assignments.tolist()), [key, "cluster"])
        summary.update(assignments=str(csv_path), n_clusters=int(np.unique(assignments[assignments >= 0]).size))
    write_json(out_dir / "export.json", summary)
    return summary
