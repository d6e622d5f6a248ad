"""A self-describing run folder, from which every offline tool rebuilds the model.

    runs/NAME/
      config.yaml              the full TrainConfig (+ package version)
      checkpoint.pt            latest finished cycle: model, optimiser, cycle, assignments, and
                               clusters (the cycle's PCA, centroids, re-splits and the network that
                               computed the clustered features: ``deepcluster assign``)
      checkpoints/init.pt      the network at its random initialisation
      checkpoints/cycle_NNN.pt kept every ``checkpoint_every`` cycles
      assignments/cycle_NNN.npy
      metrics.jsonl            one record per finished cycle
      tensorboard/             the same curves for TensorBoard
      .lock                    held (fcntl) while a process trains in the folder; names its pid;
                               removed when training ends

``config.yaml`` stores ``data.root`` absolute, or relative to the folder when the data lies inside
it (:func:`portable_root`): a folder works from any directory and when moved; :func:`data_root`
(``--data-root DIR``) points a folder at data that moved.

Reading a folder never runs code from it: checkpoints are loaded with ``weights_only=True``
(tensors, numbers, strings, lists and dicts only), ``.npy`` files without pickles, YAML with
``safe_load``.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deepcluster.core.config import TrainConfig, apply_overrides, config_to_dict, read_yaml
from deepcluster.core.errors import ConfigError, TrainingError, first_line
from deepcluster.core.files import load_torch_file, read_jsonl, write_text
from deepcluster.models import DeepClusterNet, build_model

__all__ = ["RunFolder", "build_network", "check_output_folder", "data_root", "portable_root"]

#: ``--data-root DIR`` of the offline commands: where a moved run folder's data now lives.
_DATA_ROOT: contextvars.ContextVar[str | None] = contextvars.ContextVar("deepcluster_data_root", default=None)


@contextlib.contextmanager
def data_root(root: str | Path | None) -> Iterator[None]:
    """Within this block, every run folder loads its config with ``data.root`` = ``root``
    (``--data-root DIR`` of the offline commands: the run folder or its data moved).
    ``None`` changes nothing."""
    if root is None:
        yield
        return
    path = Path(root).expanduser()
    if not path.exists():
        raise ConfigError(f"--data-root {root}: no such folder; pass the folder that holds the run's images")
    token = _DATA_ROOT.set(str(path.resolve()))
    try:
        yield
    finally:
        _DATA_ROOT.reset(token)


def portable_root(root: str | None, run_dir: str | Path) -> str | None:
    """``data.root`` as a run folder stores it: relative to the folder when the data lies inside it
    (so that they move together), else absolute -- never relative to where ``train`` ran."""
    if root is None:
        return None
    path = Path(root).expanduser().resolve()
    folder = Path(run_dir).expanduser().resolve()
    try:
        return path.relative_to(folder).as_posix() or "."
    except ValueError:
        return str(path)


@dataclass
class RunFolder:
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # paths -----------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def init_path(self) -> Path:
        return self.path / "checkpoints" / "init.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    def cycle_checkpoint_path(self, cycle: int) -> Path:
        return self.path / "checkpoints" / f"cycle_{cycle:03d}.pt"

    def assignments_path(self, cycle: int) -> Path:
        return self.path / "assignments" / f"cycle_{cycle:03d}.npy"

    # reading ---------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> RunFolder:
        if not self.path.is_dir():
            raise TrainingError(f"run folder {self.path} does not exist: pass the --out folder of a `deepcluster train` run")
        if not self.config_path.is_file():
            raise TrainingError(f"{self.path} has no config.yaml, so it is not a deepcluster run folder: pass the --out folder of a `deepcluster train` run")
        return self

    def load_config(self) -> TrainConfig:
        """The run's config, with ``data.root`` made absolute: a relative root is the folder's own
        (``data/`` inside the run folder), or, in folders written before 0.3, relative to where
        ``train`` ran. Within :func:`data_root` the given root replaces it."""
        data = read_yaml(self.require().config_path)
        data.setdefault("precision", "fp32")  # folders from before precision existed were trained in fp32
        section = data.get("data")
        if isinstance(section, dict):
            override = _DATA_ROOT.get()
            if override is not None:
                section["root"] = override
            elif isinstance(section.get("root"), str) and not Path(section["root"]).expanduser().is_absolute():
                inside = self.path / section["root"]
                section["root"] = str((inside if inside.exists() else Path(section["root"])).resolve())
        return apply_overrides(TrainConfig, data, source=str(self.config_path))

    def save_config(self, cfg: TrainConfig) -> None:
        """Write ``config.yaml``; ``data.root`` is stored by :func:`portable_root`."""
        data = config_to_dict(cfg)
        data["data"]["root"] = portable_root(cfg.data.root, self.path)
        write_text(self.config_path, yaml.safe_dump(data, sort_keys=False))

    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl``; a torn last line (an interrupted write) is dropped with a warning."""
        return read_jsonl(self.metrics_path, torn_tail="warn")

    def assignment_cycles(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / "assignments").glob("cycle_*.npy"))

    def load_assignments(self, cycle: int | None = None) -> np.ndarray:
        cycles = self.assignment_cycles()
        if not cycles:
            raise TrainingError(f"{self.path} has no saved assignments yet: train at least one cycle")
        cycle = cycles[-1] if cycle is None else cycle
        path = self.assignments_path(cycle)
        if not path.is_file():
            raise TrainingError(f"{path} not found: available cycles are {cycles}")
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise TrainingError(f"assignments file {path} is unreadable or holds pickled objects ({first_line(e)}): "
                                "it is not loaded; delete it or copy the folder again") from None

    def checkpoint_file(self, which: str = "last") -> Path:
        """The file of checkpoint ``which``: ``last``, ``init`` or a cycle number with a kept checkpoint.
        ``last`` of a run with no finished cycle (``cycles: 0``, an imported network) is ``init``.

        Raises
        ------
        ConfigError
            If ``which`` is not ``last``, ``init`` or a number.
        TrainingError
            If the file does not exist (the message lists the kept checkpoints).
        """
        which = str(which).strip()
        if which == "last":
            path = self.checkpoint_path
            if not path.is_file() and self.init_path.is_file():  # no cycle finished (cycles: 0): the initial network
                path = self.init_path
        elif which == "init":
            path = self.init_path
        elif which.isdigit():
            path = self.cycle_checkpoint_path(int(which))
        else:
            raise ConfigError(f"checkpoint {which!r}: use last, init or a cycle number (e.g. 5)")
        if not path.is_file():
            kept = sorted(p.stem.split("_")[1].lstrip("0") or "0" for p in (self.path / "checkpoints").glob("cycle_*.pt"))
            raise TrainingError(f"checkpoint {path} not found: available are last, init"
                                + (", " + ", ".join(kept) if kept else "") + " (cycles kept every checkpoint_every)")
        return path

    def load_checkpoint(self, which: str = "last") -> dict[str, Any]:
        """``which``: ``last``, ``init`` or a cycle number. Loaded with ``weights_only=True``."""
        path = self.checkpoint_file(which)
        ckpt = load_torch_file(path, error=TrainingError,
                               if_refused=". deepcluster before 0.2 kept numpy arrays in checkpoints: retrain, "
                                          "or re-save the file with tensors only if you trust it",
                               if_unreadable="delete it (resume from the previous checkpoint) or copy the folder again")
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise TrainingError(f"checkpoint {path} is not a deepcluster checkpoint (no model weights): "
                                "delete it and resume from the previous one")
        if "assignments" in ckpt:
            ckpt["assignments"] = np.asarray(ckpt["assignments"], dtype=np.int64)
        return ckpt

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``.lock`` (fcntl) while training in the folder; a second trainer gets a one-line error.

        The operating system releases the lock when its holder dies, so a lock left by a killed
        process is simply taken over; a normal finish (or a one-line error) removes the file. The
        folder is created if needed (and removed again when it was created here and nothing but
        the lock was written in it).
        """
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / ".lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise TrainingError(f"{self.path} is in use: {holder} is training in it; wait for it to finish "
                                    "(or stop it), then resume") from None
            try:  # the holder before us may have removed the file as we opened it: lock the one on disk
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            info = f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})"
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
            try:
                yield
            except BaseException:
                if created and {p.name for p in self.path.iterdir()} == {".lock"}:
                    os.unlink(path)
                    self.path.rmdir()
                    created = False
                raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    if path.exists():
                        os.unlink(path)  # still held: nobody can take it between the check and the removal
        finally:
            os.close(fd)

    def build_model(self, which: str = "last", cfg: TrainConfig | None = None) -> DeepClusterNet:
        """Rebuild the network from the folder alone, with the weights of ``which``."""
        cfg = cfg or self.load_config()
        ckpt = self.load_checkpoint(which)
        model = build_network(cfg, ckpt["in_channels"], ckpt["input_size"])
        try:
            model.load_state_dict(ckpt["model"], strict=True)
        except RuntimeError as e:
            raise TrainingError(f"checkpoint {self.checkpoint_file(which)} does not fit the run's {cfg.model.arch} "
                                f"({first_line(e)}): it was written by another configuration") from None
        model.eval()
        return model


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be created: a parent that is a file, or
    a folder this process cannot write in."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{option} {path}: {probe} is a file, not a folder; choose another {option}")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write in {probe} (permission denied); choose another {option}")
    return path


def build_network(cfg: TrainConfig, in_channels: int, input_size: int, seed: int | None = None) -> DeepClusterNet:
    """The run's architecture, without its top layer (that depends on the cycle's clusters)."""
    return build_model(
        cfg.model.arch, in_channels=in_channels, input_size=input_size, sobel=cfg.model.sobel,
        num_classes=None, seed=cfg.network_seed if seed is None else seed,
    )
