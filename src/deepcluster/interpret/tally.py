"""NetDissect-Lite's ``tally.csv``: its columns, and the one writer and reader of the file.

One row per unit (1-based), best score first: ``unit,category,label,score`` (the unit's best
concept, its category and IoU), then per category of the probe
``<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou`` (the unit's best concept
of that category and its counts). :func:`write_tally` writes the file of a dissection
(:func:`deepcluster.interpret.dissect.dissect`); :func:`read_tally` reads it back, or one
written by NetDissect-Lite.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from deepcluster.core import files as dio
from deepcluster.core.errors import DataError

__all__ = ["TALLY_FIELDS", "TallySource", "format_count", "read_tally", "tally_fields", "write_tally"]

#: Leading columns of NetDissect-Lite's tally.csv; then 5 per category (:func:`tally_fields`).
TALLY_FIELDS = ("unit", "category", "label", "score")
_CAT_FIELDS = ("label", "truth", "activation", "intersect", "iou")


class TallySource(Protocol):
    """What :func:`write_tally` writes: a :class:`~deepcluster.interpret.dissect.DissectResult`."""

    @property
    def categories(self) -> Sequence[str]: ...

    def tally_rows(self) -> list[dict[str, Any]]: ...


def tally_fields(categories: Sequence[str]) -> list[str]:
    """NetDissect-Lite's tally.csv header: ``unit,category,label,score`` then, per category,
    ``<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou``."""
    return [*TALLY_FIELDS, *(f"{c}-{f}" for c in categories for f in _CAT_FIELDS)]


def format_count(x: float) -> str:
    """A pixel count as tally.csv writes it: an integer without ``.0``, else ``.6g``."""
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.6g}"


def write_tally(result: TallySource, path: str | Path) -> Path:
    """NetDissect-Lite's tally.csv of ``result`` (units 1-based, best score first); returns ``path``.

    IoUs (``score``, ``<cat>-iou``) are written with 6 decimals, counts by :func:`format_count`.
    """
    rows = []
    for row in result.tally_rows():
        cells = {}
        for k, v in row.items():
            if isinstance(v, float):
                v = f"{v:.6f}" if k == "score" or k.endswith("-iou") else format_count(v)
            cells[k] = v
        rows.append(cells)
    return dio.write_csv(path, rows, tally_fields(result.categories))


def read_tally(path: str | Path, *, min_score: float | None = None) -> list[dict[str, Any]]:
    """Rows of a tally.csv written by :func:`write_tally` or by NetDissect-Lite, file order.

    ``unit`` is an int (1-based), ``score`` and the ``<cat>-truth/-activation/-intersect/-iou``
    columns floats, ``category``, ``label`` and ``<cat>-label`` strings; other columns are kept
    as strings. ``min_score`` keeps only the rows scoring at least that much (e.g. 0.04).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tally file {path} does not exist: run `deepcluster dissect` (or NetDissect-Lite) first")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            raw = [{(k or "").strip(): (v or "") for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} ({exc})") from None
    missing = [c for c in TALLY_FIELDS if c not in fields]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}: a tally.csv starts with unit,category,label,score")
    numeric = {f"-{s}" for s in _CAT_FIELDS if s != "label"}
    rows = []
    for line, r in enumerate(raw, start=2):
        row: dict[str, Any] = {}
        for k, v in r.items():
            try:
                if k == "unit":
                    row[k] = int(float(v))
                elif k == "score" or any(k.endswith(s) for s in numeric):
                    row[k] = float(v) if v.strip() else float("nan")
                else:
                    row[k] = v
            except ValueError:
                raise DataError(f"{path} line {line}: column {k} must be a number, got {v!r}") from None
        if min_score is None or row["score"] >= min_score:
            rows.append(row)
    return rows
