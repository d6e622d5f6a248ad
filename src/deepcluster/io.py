"""Atomic file writes: a crash or kill mid-write never leaves a half-written file behind.

Everything is written to a temporary file in the same directory, flushed, then renamed over the
target (``os.replace`` is atomic on POSIX), so readers see either the old or the new content.
Files get the modes of any other file the process creates (``0666`` less the umask).
JSON-lines logs are appended to (one ``write`` of the whole line, then ``fsync``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_temp(path: Path) -> Path:
    # Not mkstemp: its files are 0600, and outputs are shared like any other file (0666 & ~umask).
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")  # pragma: no cover


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes(path, buf.getvalue())


def torch_save(path: str | Path, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (a single ``write`` of the whole line, then ``fsync``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def csv_text(rows: Iterable[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str], *,
             float_format: str | None = None) -> str:
    """CSV with a header line of ``columns``, then one line per row (``\n`` line ends).

    Rows are mappings (read by column; missing keys and ``None`` give empty cells, other keys are
    ignored) or sequences in column order. With ``float_format`` (e.g. ``".6f"``) floats are
    written in that format and non-finite ones as empty cells.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row)
        writer.writerow([_csv_cell(v, float_format) for v in values])
    return buf.getvalue()


def _csv_cell(value: Any, float_format: str | None) -> Any:
    if value is None:
        return ""
    if float_format is not None and isinstance(value, float):
        return format(value, float_format) if math.isfinite(value) else ""
    return value


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str], *,
              float_format: str | None = None) -> Path:
    """Write :func:`csv_text` to ``path`` atomically; returns ``path``."""
    write_text(path, csv_text(rows, columns, float_format=float_format))
    return Path(path)
