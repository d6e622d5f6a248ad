"""Tables of the evaluation suite's rows: tidy CSV, and pivots (layers × run/checkpoint) as Markdown.

The pivots are shared by the Markdown file and the command line's rich tables, so both show the
same cells: accuracies in percent, the linear probe's last epoch with its (optimistic) best epoch in
brackets, the kNN accuracies of every k and the low-shot mean ± std of every n. Each table says
which images were scored: a test split, or (a run without one) a held-out part of its training
images, never called "test".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepcluster.core.files import write_csv, write_text

#: Column order of ``probe_table.csv``.
CSV_FIELDS: tuple[str, ...] = ("run_name", "checkpoint", "label", "cycle", "layer", "dim", "protocol", "metric",
                               "value", "std", "scored", "source", "seconds", "run")

_TITLES = {
    "linear": "Linear probe: {acc} (%) after the last epoch; in brackets the best epoch's (optimistic: "
              "chosen on the {images} themselves)",
    "knn": "Weighted cosine kNN: {acc} (%)",
    "lowshot": "Low-shot: {acc} (%) with n labelled images per class, mean ± std over draws",
}


@dataclass
class PivotTable:
    """One protocol's numbers with layers as rows and one column per (run, checkpoint).

    Attributes
    ----------
    protocol : str
        The protocol.
    title : str
        What the cells are.
    scored : str
        Which images were scored: ``"Scored on the test split (10,000 images)."``, or one clause per
        run when they differ.
    header : list[str]
        Column names: ``layer``, ``dim``, then one per (run, checkpoint). The raw-pixel baseline
        is a last row ``raw pixels``, the same number in every column of its run.
    rows : list[list[str]]
        Formatted cells (``-`` where there is no number).
    """

    protocol: str
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    scored: str = ""


def _ordered(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def column_labels(rows: list[dict[str, Any]], *, pixels: bool = True) -> dict[tuple[str, str], str]:
    """(run_name, checkpoint) → column label: the checkpoint's label, prefixed by the run with several runs.

    ``pixels=False`` leaves out the raw-pixel baseline's pseudo checkpoint.
    """
    keys = _ordered((r["run_name"], r["checkpoint"]) for r in rows if pixels or r["checkpoint"] != "pixels")
    labels = {(r["run_name"], r["checkpoint"]): r.get("label") or r["checkpoint"] for r in rows}
    several = len({k[0] for k in keys}) > 1
    return {k: f"{k[0]}: {labels[k]}" if several else labels[k] for k in keys}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _cell(protocol: str, metrics: dict[str, dict[str, Any]]) -> str:
    if not metrics:
        return "-"
    if protocol == "linear":
        if "last_acc" in metrics:
            return f"{_pct(metrics['last_acc']['value'])} ({_pct(metrics['best_acc']['value'])})"
        return _pct(metrics["test_acc"]["value"])
    if protocol == "lowshot":
        return " / ".join(f"{_pct(r['value'])}±{_pct(r['std'] or 0.0)}" for r in metrics.values())
    return " / ".join(_pct(r["value"]) for r in metrics.values())


def _is_test(scored: str) -> bool:
    return not scored.startswith("held-out") and "split" in scored


def scored_note(rows: list[dict[str, Any]]) -> str:
    """Which images ``rows`` were scored on, as a sentence: ``"Scored on the test split (297 images)."``,
    or per run (``"Scored on: a: ...; b: ..."``) when the runs differ."""
    per_run = {r["run_name"]: r.get("scored") or "unrecorded images" for r in rows}
    kinds = set(per_run.values())
    if len(kinds) == 1:
        return f"Scored on the {next(iter(kinds))}."
    return "Scored on: " + "; ".join(f"{name}: the {what}" for name, what in per_run.items()) + "."


def _title(protocol: str, rows: list[dict[str, Any]]) -> str:
    scored = {r.get("scored") or "" for r in rows}
    if all(_is_test(s) for s in scored):
        acc, images = "test accuracy", "test images"
    elif all(s.startswith("held-out") for s in scored):
        acc, images = "held-out accuracy", "held-out images"
    else:
        acc, images = "accuracy on the scored images", "scored images"
    title = _TITLES[protocol].format(acc=acc, images=images) if protocol in _TITLES else protocol
    metrics = _ordered(r["metric"] for r in rows)
    if protocol == "knn":
        title += " for k = " + " / ".join(m.split("=", 1)[1] for m in metrics)
    elif protocol == "lowshot":
        title += " for n = " + " / ".join(m.split("=", 1)[1] for m in metrics)
    return title


def pivot_tables(rows: list[dict[str, Any]]) -> list[PivotTable]:
    """One :class:`PivotTable` per protocol present in ``rows``, in the order they appear.

    Parameters
    ----------
    rows : list[dict]
        Tidy rows of :func:`~deepcluster.evaluate.suite.evaluate_suite`.

    Returns
    -------
    list[PivotTable]
    """
    labels = column_labels(rows, pixels=False)
    tables = []
    for protocol in _ordered(r["protocol"] for r in rows):
        prows = [r for r in rows if r["protocol"] == protocol]
        table = PivotTable(protocol, _title(protocol, prows), ["layer", "dim", *labels.values()],
                           scored=scored_note(prows))
        for layer in _ordered(r["layer"] for r in prows):
            lrows = [r for r in prows if r["layer"] == layer]
            dims = _ordered(str(r["dim"]) for r in lrows if r.get("dim") is not None)
            cells = []
            for run_name, checkpoint in labels:
                # The raw-pixel baseline does not depend on the checkpoint: its row repeats it per column.
                key = (run_name, "pixels" if layer == "pixels" else checkpoint)
                metrics = {r["metric"]: r for r in lrows if (r["run_name"], r["checkpoint"]) == key}
                cells.append(_cell(protocol, metrics))
            table.rows.append(["raw pixels" if layer == "pixels" else layer, "/".join(dims) or "-", *cells])
        tables.append(table)
    return tables


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """Every pivot table of ``rows`` as Markdown, one section per protocol."""
    parts = []
    for t in pivot_tables(rows):
        parts.append(f"### {t.protocol}\n\n{t.title}. {t.scored}\n")
        parts.append("| " + " | ".join(_escape(h) for h in t.header) + " |")
        parts.append("|" + "|".join(["---", "---:"] + ["---:"] * (len(t.header) - 2)) + "|")
        parts += ["| " + " | ".join(_escape(c) for c in r) + " |" for r in t.rows]
        parts.append("")
    return "\n".join(parts)


def write_table_markdown(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write :func:`table_markdown` to ``path`` (atomically)."""
    write_text(path, table_markdown(rows))
    return Path(path)


def write_table_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the tidy rows as CSV (columns :data:`CSV_FIELDS`), atomically."""
    write_csv(path, rows, CSV_FIELDS)
    return Path(path)


def write_cycle_csv(cycles: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Write per-run cycle metrics as one CSV with a ``run_name`` column, atomically."""
    records = [{"run_name": name, **r} for name, rs in cycles.items() for r in rs]
    fields = _ordered(k for r in records for k in r) or ["run_name", "cycle"]
    write_csv(path, records, fields)
    return Path(path)
