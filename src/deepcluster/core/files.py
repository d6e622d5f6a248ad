"""Atomic file writes: a crash or kill mid-write never leaves a half-written file behind.

Everything is written to a temporary file in the same directory, flushed, then renamed over the
target (``os.replace`` is atomic on POSIX), so readers see either the old or the new content.
Files get the modes of any other file the process creates (``0666`` less the umask).
JSON-lines logs are appended to (one ``write`` of the whole line, then ``fsync``).

Reading is as careful: :func:`load_torch_file` is the one ``torch.load`` of the package, and it never
runs code from the file.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import pickle
import re
import secrets
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepcluster.core.errors import DataError, DeepClusterError, DeepClusterWarning, DiskFullError, first_line

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    A full disk (``ENOSPC``/``EDQUOT``) at any step raises :class:`DiskFullError` naming ``path``;
    the old content of ``path`` is kept and the temporary file removed.
    """
    path = Path(path)
    with disk_full_as_error(path):
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


@contextlib.contextmanager
def disk_full_as_error(path: str | Path) -> Iterator[None]:
    """Turn ``ENOSPC``/``EDQUOT`` raised inside the block into a one-line :class:`DiskFullError`."""
    try:
        yield
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise DiskFullError(path) from None
        raise


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

    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as raw:
        sink = _Sink(raw)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            # torch reports a failed write as "enforce fail at inline_container.cc"; the sink saw why
            if sink.error is not None:
                raise sink.error from None
            raise


class _Sink(io.RawIOBase):
    """A file object for ``torch.save`` that keeps the ``OSError`` of a failed write (torch hides it)."""

    def __init__(self, raw: io.RawIOBase) -> None:
        super().__init__()
        self.raw, self.error = raw, None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.raw.write(data)
        except OSError as e:
            self.error = e
            raise


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (a single ``write`` of the whole line, then ``fsync``).

    On a full disk the file is cut back to its old size (no torn line) and :class:`DiskFullError` raised.
    """
    path = Path(path)
    line = (json.dumps(record) + "\n").encode("utf-8")
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def read_jsonl(path: str | Path, *, torn_tail: str = "error") -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``[]`` when it does not exist).

    A line that is not JSON raises :class:`DataError` naming the file and line, except a last line
    without its newline (a write that was interrupted, or a copy made while the file was written):
    with ``torn_tail="warn"`` it is dropped with a :class:`DeepClusterWarning`.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) and torn_tail == "warn":  # the last piece, with no newline after it
                warnings.warn(f"{path}: its last line is incomplete (an interrupted write, or a copy made while "
                              "it was written); it is dropped, and resuming redoes that cycle",
                              DeepClusterWarning, stacklevel=2)
                break
            raise DataError(f"{path}, line {number}, is not valid JSON: the file is damaged; restore it from a "
                            "copy, or delete the line and everything after it, then resume") from None
    return records


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


def load_torch_file(
    path: str | Path,
    *,
    error: type[DeepClusterError] = DataError,
    if_refused: str = "",
    if_unreadable: str = "copy the file again",
    what: str = "",
    allowed: Sequence[Any] = (),
) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: nothing in the file is ever run.

    What a file holds beyond tensors, numbers, strings, lists and dicts (and the classes of
    ``allowed``) is refused. Every failure is one ``error`` line naming the file, in the caller's words.

    Parameters
    ----------
    path : str or Path
        The file.
    error : DeepClusterError subclass
        What to raise (the run folder raises :class:`~deepcluster.core.errors.TrainingError`,
        published weights :class:`~deepcluster.core.errors.DataError`).
    if_refused : str
        Appended to the message of a file that holds other objects (e.g. how to re-save it).
    if_unreadable : str
        The fix named when the file is truncated or not a torch file.
    what : str
        Words before the path in the unreadable message (e.g. ``"weights file "``).
    allowed : sequence
        Classes ``torch.serialization.safe_globals`` may rebuild (e.g. ``argparse.Namespace``).
    """
    import torch

    safe_globals = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe_globals is None or not allowed:  # torch < 2.5 has no allow-list: only the defaults
            return torch.load(path, map_location="cpu", weights_only=True)
        with safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise error(
            f"{path} holds objects other than tensors, numbers, strings, lists and dicts ({_refused(e)}), "
            f"so it is not loaded: loading it could run code{if_refused}"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch reports truncated or foreign files with many types
        raise error(f"{what}{path} is unreadable ({e.__class__.__name__}: {first_line(e)}): {if_unreadable}") from None


def _refused(e: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a few words (its message is a page)."""
    text = str(e)
    found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", text, re.IGNORECASE)
    if found:
        return f"it refers to {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    return found.group(1)[:200] if found else "refused by torch.load(weights_only=True)"
