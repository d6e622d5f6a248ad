"""Several processes through PyTorch's own engine: ``torch.distributed``, started by ``torchrun``.

Every command runs the same code whatever the number of processes: a single process is the
world of size 1, where every collective below is the identity. Under ``torchrun`` (``WORLD_SIZE``
and friends in the environment) :func:`init` joins the process group: gloo on CPUs, NCCL on
GPUs (``backend: auto``), each rank on the GPU of its local rank when there are GPUs.

A resumed run's process group is created with the run's own settings, which only rank 0 reads
(:func:`init_from_main`: rank 0 hands them to the others through the rendezvous's key-value store
before the group exists).

The collectives take and return numpy arrays (what clustering works with); they count the
bytes this rank sends (:func:`bytes_sent`), which training records per cycle.
"""

from __future__ import annotations

import datetime
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from deepcluster.core.errors import ConfigError, first_line

__all__ = [
    "World",
    "all_gather_objects",
    "all_gather_rows",
    "all_reduce_sum",
    "barrier",
    "broadcast_array",
    "broadcast_object",
    "bytes_sent",
    "gather_rows",
    "init",
    "init_from_main",
    "launched_by_torchrun",
    "shard",
    "shutdown",
    "world",
]

_BYTES = [0]

#: Bytes each rank hands to one round of :func:`gather_rows` (so rank ``dst`` receives at most
#: world size × this in one round, on its GPU under NCCL).
GATHER_ROUND_BYTES = 64 * 2**20

#: How long the other ranks wait for rank 0's settings in :func:`init_from_main`.
_SETTINGS_WAIT_S = 600.0


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def timeout_s(self) -> float | None:
        """How long a collective waits for the other ranks, as the process group itself holds it
        (``None`` for a single process, or where PyTorch does not say)."""
        if not self.distributed or not (dist.is_available() and dist.is_initialized()):
            return None
        try:
            group = dist.distributed_c10d._get_default_group()
            backend = group._get_backend(torch.device("cuda" if self.backend == "nccl" else "cpu"))
            return float(backend.options._timeout.total_seconds())
        except (AttributeError, RuntimeError):  # pragma: no cover - another PyTorch's internals
            return None


def world() -> World:
    """The current world: the process group's when one is initialised, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())
    return World()


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting the env:// variables)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init(backend: str = "auto", device: str = "auto", timeout_s: float = 600.0) -> World:
    """Join the process group when launched by torchrun; a single process otherwise.

    Parameters
    ----------
    backend : {"auto", "gloo", "nccl"}
        ``auto``: NCCL when this process uses CUDA, gloo otherwise.
    device : str
        The config's device (``auto``, ``cpu``, ``cuda``): decides the backend and, with CUDA,
        binds this rank to the GPU of its local rank.
    timeout_s : float
        How long a collective may wait for the other ranks before the run fails.

    Raises
    ------
    ConfigError
        An unknown backend, NCCL without CUDA, or a rendezvous that cannot be reached.
    """
    _check_backend(backend)
    if not launched_by_torchrun():
        return World()
    if dist.is_initialized():
        return world()
    chosen = _choose_backend(backend, device)
    try:
        dist.init_process_group(chosen, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError, TimeoutError) as e:
        raise _unreachable(e) from None
    return world()


def init_from_main(read: Callable[[], tuple[Any, str, str, float]]) -> tuple[World, Any]:
    """Join the process group with settings that only rank 0 reads (a resumed run's config).

    ``read`` runs on rank 0 (or in the single process) before the group exists and returns
    ``(payload, backend, device, timeout_s)``. Rank 0 hands all four to the other ranks through the
    key-value store of torchrun's ``env://`` rendezvous (the store the process group is then built
    on), so that every rank creates the group with the same backend, device and timeout as
    :func:`init` would, and receives the payload; the other ranks never call ``read`` (nor read
    any file). An error in ``read`` stops rank 0, and torchrun the others.

    Returns
    -------
    tuple[World, Any]
        This process's world and rank 0's payload.
    """
    if not launched_by_torchrun():
        payload, backend, _, _ = read()
        _check_backend(backend)
        return World(), payload
    if dist.is_initialized():  # the group exists already: its settings stay, the payload is broadcast
        payload = read()[0] if world().is_main else None
        return world(), broadcast_object(payload)
    try:
        store, rank, size = next(dist.rendezvous("env://", timeout=datetime.timedelta(seconds=_SETTINGS_WAIT_S)))
    except (RuntimeError, ValueError, TimeoutError) as e:
        raise _unreachable(e) from None
    settings = dist.PrefixStore("deepcluster", store)
    key = f"init-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"  # a restarted round never reads the last one's
    if rank == 0:  # checked here first: a bad setting is rank 0's one-line error, the others wait for nothing
        payload, backend, device, timeout_s = read()
        _check_backend(backend)
        chosen = _choose_backend(backend, device)
        settings.set(key, pickle.dumps((payload, backend, device, timeout_s)))
    else:
        payload, backend, device, timeout_s = pickle.loads(settings.get(key))
        chosen = _choose_backend(backend, device)
    timeout = datetime.timedelta(seconds=timeout_s)
    store.set_timeout(timeout)  # as init_process_group does with the store of its own rendezvous
    try:
        dist.init_process_group(chosen, store=dist.PrefixStore("default_pg", store), rank=rank, world_size=size,
                                timeout=timeout)
    except (RuntimeError, ValueError, TimeoutError) as e:
        raise _unreachable(e) from None
    return world(), payload


def _check_backend(backend: str) -> None:
    if backend not in ("auto", "gloo", "nccl"):
        raise ConfigError(f"distributed.backend {backend!r}: use auto, gloo or nccl")


def _choose_backend(backend: str, device: str) -> str:
    """The backend ``backend`` and ``device`` mean on this machine; with CUDA, this rank's GPU is
    bound (that of its local rank)."""
    uses_cuda = torch.cuda.is_available() and device != "cpu"
    chosen = ("nccl" if uses_cuda else "gloo") if backend == "auto" else backend
    if chosen == "nccl" and not uses_cuda:
        raise ConfigError("distributed.backend=nccl needs CUDA: use backend gloo (or auto) on CPUs")
    if uses_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return chosen


def _unreachable(e: BaseException) -> ConfigError:
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    return ConfigError(f"cannot join the process group at {where} ({first_line(e)}): check that every machine reaches "
                       "the rendezvous address and port, and started with the same --nnodes")


def shutdown() -> None:
    """Leave the process group (a no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, w: World | None = None) -> slice:
    """This rank's contiguous, deterministic share of ``n`` items (sizes differ by at most one)."""
    w = w or world()
    return slice(w.rank * n // w.size, (w.rank + 1) * n // w.size)


def bytes_sent() -> int:
    """Bytes this process has sent through the collectives below since it started."""
    return _BYTES[0]


def _tensor(array: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array))
    backend = dist.get_backend()
    return t.cuda() if backend == "nccl" else t


def all_reduce_sum(array: np.ndarray) -> np.ndarray:
    """The element-wise sum of ``array`` over all ranks (float64 and int64 sum exactly as given)."""
    w = world()
    if not w.distributed:
        return np.asarray(array)
    t = _tensor(np.asarray(array))
    _BYTES[0] += t.numel() * t.element_size()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def _counts(n: int) -> list[int]:
    w = world()
    counts = torch.tensor([n], dtype=torch.int64)
    out = [torch.zeros(1, dtype=torch.int64) for _ in range(w.size)]
    if dist.get_backend() == "nccl":
        counts, out = counts.cuda(), [o.cuda() for o in out]
    dist.all_gather(out, counts)
    _BYTES[0] += 8
    return [int(o.item()) for o in out]


def _padded(array: np.ndarray) -> tuple[torch.Tensor, list[int]]:
    """This rank's rows padded to the largest share (as a tensor for the collective), and every
    rank's row count."""
    counts = _counts(len(array))
    padded = np.zeros((max(counts), *array.shape[1:]), dtype=array.dtype)
    padded[: len(array)] = array
    return _tensor(padded), counts


def all_gather_rows(array: np.ndarray) -> np.ndarray:
    """Every rank's rows of ``array`` (same trailing shape and dtype on all ranks), in rank order."""
    array = np.ascontiguousarray(array)
    w = world()
    if not w.distributed:
        return array
    t, counts = _padded(array)
    parts = [torch.empty_like(t) for _ in range(w.size)]
    _BYTES[0] += t.numel() * t.element_size()
    dist.all_gather(parts, t)
    return np.concatenate([p.cpu().numpy()[:c] for p, c in zip(parts, counts)])


def gather_rows(array: np.ndarray, dst: int = 0, *,
                out: Callable[[tuple[int, ...], np.dtype], np.ndarray] | None = None) -> np.ndarray | None:
    """Every rank's rows of ``array`` on rank ``dst`` only (``None`` elsewhere), in rank order.

    :func:`torch.distributed.gather` (gloo and NCCL both have it): only rank ``dst`` receives the
    rows. They travel in rounds of at most :data:`GATHER_ROUND_BYTES` per rank (each rank's share
    padded to the largest, the padding dropped again), so rank ``dst`` never holds more than world
    size × that in flight, on its GPU under NCCL. A rank may have no rows.

    Parameters
    ----------
    array : np.ndarray
        This rank's rows (the same trailing shape and dtype on every rank).
    dst : int
        The rank that receives them.
    out : callable or None
        ``out(shape, dtype)`` allocates the result on rank ``dst`` (e.g. a memory-mapped ``.npy``
        file, so the rows go to disk as they arrive); ``None``: in memory.
    """
    array = np.ascontiguousarray(array)
    w = world()
    if not w.distributed:
        if out is None:
            return array
        result = out(array.shape, array.dtype)
        result[...] = array
        return result
    counts = _counts(len(array))
    rows = max(counts)
    row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
    step = max(1, GATHER_ROUND_BYTES // row_bytes)
    result = None
    if w.rank == dst:
        result = (out or np.empty)((sum(counts), *array.shape[1:]), array.dtype)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for lo in range(0, rows, step):
        hi = min(lo + step, rows)
        chunk = np.zeros((hi - lo, *array.shape[1:]), dtype=array.dtype)
        mine = array[lo:hi]
        chunk[: len(mine)] = mine
        t = _tensor(chunk)
        parts = [torch.empty_like(t) for _ in range(w.size)] if w.rank == dst else None
        if w.rank != dst:
            _BYTES[0] += t.numel() * t.element_size()
        dist.gather(t, parts, dst=dst)
        if result is not None:
            for r, part in enumerate(parts):
                n = min(hi, counts[r]) - lo
                if n > 0:
                    result[starts[r] + lo : starts[r] + lo + n] = part[:n].cpu().numpy()
    return result


def broadcast_array(array: np.ndarray | None, src: int = 0) -> np.ndarray:
    """``array`` of rank ``src`` on every rank (the others pass ``None``)."""
    w = world()
    if not w.distributed:
        assert array is not None
        return np.asarray(array)
    meta = broadcast_object(None if array is None else (np.asarray(array).shape, np.asarray(array).dtype.str), src)
    shape, dtype = meta
    buf = np.ascontiguousarray(array) if w.rank == src else np.empty(shape, dtype=np.dtype(dtype))
    t = _tensor(buf)
    if w.rank == src:
        _BYTES[0] += t.numel() * t.element_size() * (w.size - 1)
    dist.broadcast(t, src=src)
    return t.cpu().numpy()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """A picklable object of rank ``src`` on every rank (small things: decisions, shapes, configs)."""
    w = world()
    if not w.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order."""
    w = world()
    if not w.distributed:
        return [obj]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world().distributed:
        dist.barrier()
