"""Typed, validated configuration: YAML files plus ``--set key=value`` overrides.

One config object per command. Unknown keys and bad values are rejected with a
:class:`~deepcluster.core.errors.ConfigError` that names the key and what would be valid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deepcluster.core.errors import ConfigError

M = TypeVar("M", bound="StrictModel")


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _off_to_none(v: Any) -> Any:
    if isinstance(v, str) and v.strip().lower() in {"off", "none", "null", "false", "no"}:
        return None
    if v is False:
        return None
    return v


class AugmentConfig(StrictModel):
    """Training-time augmentation (never used for feature extraction)."""

    random_resized_crop: bool = True
    crop_scale_min: float = Field(0.5, gt=0.0, le=1.0)
    hflip: bool = True


class DataConfig(StrictModel):
    """Where the images come from. Labels, if any, are only used for metrics."""

    name: str = "fashion-mnist"
    root: str | None = None
    split: str = "train"
    test_split: str | None = "test"
    image_size: int | None = Field(None, ge=8)
    # Resize the shorter side to this first, then centre-crop to image_size (deterministic;
    # torchvision's Resize + CenterCrop, e.g. 44 then 32 px as the Deep Dive authors load
    # Fashion-MNIST). In-memory datasets (mnist, fashion-mnist, cifar10, svhn). None: resize only.
    resize: int | None = Field(None, ge=8)
    limit: int | None = Field(None, ge=2)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    # What the in-memory path holds (the pixels, once, plus the per-image arrays of a cycle) up to
    # this many MB: read once into memory (the fast path); beyond, a folder or ingested pool is
    # streamed through `workers` DataLoader processes. The cycle's full-width features are kept
    # only within what the pixels leave of it. None: a quarter of RAM; 0: always stream.
    memory_budget_mb: int | None = Field(None, ge=0)
    workers: int | None = Field(None, ge=0)  # None: the cores per process (data.source.default_workers)
    # Streamed JPEG folders: "auto" decodes them on the GPU (torchvision.io.decode_jpeg, nvJPEG) when
    # the run computes on one, else in the workers with PIL; "device" always on the run's device; "pil" never.
    decode: Literal["auto", "pil", "device"] = "auto"
    # Per-channel normalisation of the pixels in [0, 1]; None: the dataset's own statistics (0.5
    # for folders). A published network wants what it was trained with: ImageNet's for FAIR's
    # DeepCluster (mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]).
    mean: list[float] | None = None
    std: list[float] | None = None

    _off = field_validator("test_split", "limit", "image_size", "resize", "mean", "std", mode="before")(
        classmethod(lambda cls, v: _off_to_none(v))
    )

    @model_validator(mode="after")
    def _check_norm(self) -> DataConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give data.mean and data.std together (or neither: the dataset's own)")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
                raise ValueError(f"data.mean and data.std need one value per channel (1 or 3), got "
                                 f"{len(self.mean)} and {len(self.std)}")
            if any(v <= 0 for v in self.std):
                raise ValueError(f"data.std values must be > 0, got {self.std}")
        return self


class ModelConfig(StrictModel):
    arch: str = "lenet5"
    sobel: bool = False


class DistributedConfig(StrictModel):
    """Several processes (``torchrun ... -m deepcluster train`` or ``deepcluster train --nproc N``).

    ``batch_size`` stays the global batch: each step's batch is split across the ranks, so the
    ranks together take exactly the steps of one process. ``sync_batchnorm`` normalises with the
    whole batch's statistics (then a multi-process run is the one-process run up to float
    reduction order); without it each rank normalises its own share.
    """

    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: NCCL with CUDA, gloo on CPUs
    sync_batchnorm: bool = False
    timeout: int = Field(600, ge=10)  # seconds a collective may wait for the other ranks


class EvalConfig(StrictModel):
    """Evaluation protocols used by ``deepcluster evaluate`` (and at the end of ``make demo``).

    The linear probe is ``probe="sgd"`` (the official ``eval_linear`` protocol: mini-batch SGD,
    accuracy at the last epoch) or ``probe="lbfgs"`` (full-batch L-BFGS, converged; what
    studies use). Conv maps are average-pooled to at most ``pool_budget`` dimensions.
    """

    layers: list[str] | None = None  # None: every probe layer of the model
    probe: Literal["sgd", "lbfgs"] = "sgd"
    probe_epochs: int = Field(30, ge=1)  # SGD probe
    probe_lr: float = Field(0.01, gt=0)  # SGD probe: initial learning rate (cosine-decayed to 0)
    probe_batch_size: int = Field(256, ge=1)  # SGD probe
    probe_momentum: float = Field(0.9, ge=0, lt=1)  # SGD probe
    # SGD probe: train on the features of horizontally flipped training images for a random half
    # of each batch (RandomHorizontalFlip); costs one more feature pass over the training images
    probe_hflip: bool = False
    probe_max_iter: int = Field(100, ge=1)  # L-BFGS iterations of the linear probe
    probe_weight_decay: float = Field(1e-4, ge=0)  # both probes
    pool_budget: int = Field(9600, ge=1)  # conv maps are average-pooled to at most this many dims
    knn_k: int = Field(20, ge=1)  # the single k of the quick evaluation (evaluate_run, studies)
    knn_ks: list[int] = Field(default_factory=lambda: [10, 20, 200], min_length=1)
    lowshot_n: list[int] = Field(default_factory=lambda: [1, 5, 10, 50], min_length=1)  # labelled per class
    lowshot_repeats: int = Field(5, ge=1)  # random draws of the labelled images per n
    lowshot_classifier: Literal["logreg", "ncm"] = "logreg"
    lowshot_weight_decay: float = Field(1e-2, ge=0)  # L2 of the low-shot logistic regression
    train_limit: int | None = Field(None, ge=10)
    test_limit: int | None = Field(None, ge=10)
    # With no separate test split (folder, ingested, data.test_split: null) the probes train on the
    # rest of the training images and score this seeded held-out part: a fraction in (0, 1) or a count.
    holdout: float = Field(0.2, gt=0)
    pixel_baseline: bool = True

    @model_validator(mode="after")
    def _hflip_needs_sgd(self) -> EvalConfig:
        if self.probe_hflip and self.probe != "sgd":
            raise ValueError("probe_hflip augments the SGD probe's epochs: set probe=sgd, or probe_hflip=false")
        return self

    @field_validator("holdout")
    @classmethod
    def _fraction_or_count(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError(f"a fraction in (0, 1) or a whole number of images, got {v}")
        return v

    @field_validator("knn_ks", "lowshot_n")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"every value must be >= 1, got {v}")
        return sorted(set(v))


class TrainConfig(StrictModel):
    """Everything a DeepCluster run depends on; saved as ``config.yaml`` in the run folder."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    seed: int = 0
    # How the network is initialised: "random" (from init_seed), "best_ia:N" (the highest
    # Initial Alignment among init seeds seed..seed+N-1; needs labels) or a weights FILE: a
    # published checkpoint (FAIR's DeepCluster v1, MoCo, SwAV, DINO, ... or a state dict) whose
    # backbone is loaded strictly, its top layer dropped. init_seed None = seed.
    init: str = "random"
    init_seed: int | None = None
    # 0: the run folder holds the initial network only (e.g. an imported checkpoint); every
    # command reads it as a run, and `train --resume RUN --set cycles=N` trains it further.
    cycles: int = Field(15, ge=0)
    epochs_per_cycle: int = Field(1, ge=1)

    # clustering
    clustering: Literal["kmeans", "pic"] = "kmeans"
    k: int = Field(10, ge=2)
    cluster_layer: str | None = None  # None: the trunk output before its last ReLU (Caron)
    # True: cluster the features after a ReLU (an ablation: Caron clusters before the last one)
    cluster_relu: bool = False
    pca_dim: int | None = Field(None, ge=1)
    whiten: bool = True
    kmeans_iters: int = Field(20, ge=1)
    # "faiss": faiss's k-means (the official DeepCluster's; our GEMM Lloyd at ImageNet size);
    # "sklearn": scikit-learn's KMeans (k-means++, n_init=1, max_iter=kmeans_iters, random_state
    # = the cycle's seed), as the Deep Dive authors computed Initial Alignment
    kmeans_algorithm: Literal["faiss", "sklearn"] = "faiss"
    fit_fraction: float = Field(1.0, gt=0.0, le=1.0)
    halt_clustering_after: int | None = Field(None, ge=1)
    # Caron's Algorithm 2: each cycle clusters and trains on this many images sampled from the
    # pool (seeded by seed and cycle). None: every image, every cycle.
    pool_subset: int | None = Field(None, ge=2)
    # Baseline: train on the dataset's labels instead of cluster ids (same network, loop and run
    # folder, so evaluate / report / dissect / ensemble compare it with DeepCluster directly).
    supervised: bool = False

    # optimisation
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(1e-3, ge=0)
    # false: no weight decay on BatchNorm scales/shifts and biases (the official code decays all)
    decay_norm_and_bias: bool = True
    batch_size: int = Field(128, ge=1)
    feature_batch_size: int = Field(1024, ge=1)

    checkpoint_every: int = Field(5, ge=1)  # also keep checkpoints/cycle_NNN.pt every N cycles

    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    # Arithmetic of forward passes (deepcluster.core.precision): bf16 where the CPU has AMX/AVX-512
    # BF16 or the GPU native bf16 ("auto"), fp32 elsewhere; weights and optimiser stay fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # true: PyTorch's deterministic algorithms (cuDNN included) and the torch k-means on GPUs, so
    # that a resumed or repeated GPU run gives the same numbers bit for bit (slower); on CPUs runs
    # are deterministic either way (docs/configuration.md says exactly what holds where).
    deterministic: bool = False
    # NHWC layout for inference passes: "auto" = with bf16 (measured faster), not with fp32 (so
    # that fp32 reproduces the NCHW numbers exactly); true/false to force it.
    channels_last: Literal["auto"] | bool = "auto"

    _off = field_validator("pca_dim", "halt_clustering_after", "pool_subset", mode="before")(
        classmethod(lambda cls, v: _off_to_none(v))
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.data.limit is not None and self.k > self.data.limit:
            raise ValueError(f"k={self.k} is larger than data.limit={self.data.limit}")
        if self.pool_subset is not None and self.k > self.pool_subset:
            raise ValueError(f"k={self.k} is larger than pool_subset={self.pool_subset}")
        if self.pool_subset is not None and self.supervised:
            raise ValueError("supervised=true trains on the labels of every image: drop pool_subset")
        if self.device not in {"auto", "cpu"} and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        self.best_ia_candidates()  # validates ``init``
        return self

    def best_ia_candidates(self) -> int | None:
        """N of ``init=best_ia:N``; ``None`` for ``init=random`` or a weights file."""
        if self.init == "random" or self.init_file is not None:
            return None
        head, _, n = self.init.partition(":")
        if head != "best_ia" or not n.isdigit() or int(n) < 1:
            raise ValueError(f"init must be 'random', 'best_ia:N' with N >= 1 or a weights file, got {self.init!r}")
        return int(n)

    @property
    def init_file(self) -> Path | None:
        """The weights file of ``init=FILE``; ``None`` for ``random`` and ``best_ia:N``. Anything that
        is neither of those and names a file (a path separator or a suffix) is a file."""
        text = self.init.strip()
        if text == "random" or text.startswith("best_ia"):
            return None
        if "/" in text or "\\" in text or Path(text).suffix:
            return Path(text).expanduser()
        return None

    @property
    def network_seed(self) -> int:
        """The seed the network's weights are drawn from."""
        return self.seed if self.init_seed is None else self.init_seed


# --------------------------------------------------------------------------- loading


def _format_validation_error(err: ValidationError, source: str, overridden: dict[str, Any] | None = None) -> str:
    """One line naming every bad key; with ``overridden`` (the nested ``--set`` keys) each key is
    blamed on where its value came from: ``--set`` or ``source`` (the YAML file)."""
    parts, sources = [], set()
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        if overridden is not None and _reaches(overridden, e["loc"]):
            loc = f"--set {loc}"
        else:
            sources.add(source)
        parts.append(f"{loc}: {msg}")
    where = f" ({', '.join(sorted(sources))})" if sources else ""
    return f"invalid config{where}: " + "; ".join(parts)


def _reaches(tree: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    node: Any = tree
    for p in loc:
        if not isinstance(node, dict) or p not in node:
            return False
        node = node[p]
    return True


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Overrides as a nested dict: ``["lr=0.01", "data.limit=500"]`` (``--set`` strings, values read
    as YAML) or a mapping whose keys may be dotted (``{"k": 20, "model.arch": "tiny_cnn"}``)."""
    if isinstance(overrides, Mapping):
        items = [(str(key), value, f"{key}") for key, value in overrides.items()]
    else:
        items = []
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set lr=0.05")
            key, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError:
                value = raw
            items.append((key, value, f"--set {item!r}"))
    nested: dict[str, Any] = {}
    for key, value, where in items:
        key = key.strip()
        if not key:
            raise ConfigError(f"{where}: empty key")
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {p} is not a section")
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = deep_merge(node[leaf], dict(value))
        else:
            node[leaf] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


#: The presets installed with the package (``configs/`` of the repository links here).
PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"


def available_presets(kind: Literal["train", "study"] = "train") -> list[str]:
    """Names of the installed presets: training configs (``-c fmnist_lenet``) or study specs
    (``deepcluster study fmnist_k``)."""
    folder = PRESETS_DIR if kind == "train" else PRESETS_DIR / "studies"
    return sorted(p.stem for p in folder.glob("*.yaml"))


def resolve_config_file(value: str | Path, kind: Literal["train", "study"] = "train") -> Path:
    """A config given as a file path, or as the name of an installed preset (``fmnist_lenet`` or
    ``fmnist_lenet.yaml``): an existing file wins over a preset of the same name.

    Raises
    ------
    ConfigError
        Neither a file nor a preset; the message lists the presets.
    """
    path = Path(value).expanduser()
    if path.is_file():
        return path
    folder = PRESETS_DIR if kind == "train" else PRESETS_DIR / "studies"
    name = path.name[:-5] if path.name.endswith((".yaml", ".yml")) else path.name
    preset = folder / f"{name}.yaml"
    if len(path.parts) == 1 and preset.is_file():
        return preset
    names = ", ".join(available_presets(kind))
    what = "config file" if kind == "train" else "study spec"
    hint = f" (the preset of that name: -c {name})" if preset.is_file() and kind == "train" else (
        f" (the preset of that name: {name})" if preset.is_file() else "")
    raise ConfigError(f"{what} {value} not found{hint}: pass a YAML file or a preset name: {names} "
                      "(`deepcluster list` shows them)")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass an existing YAML file, or a preset name such as "
                          "fmnist_lenet (`deepcluster list` shows them)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({e.__class__.__name__}: {e}): fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def apply_overrides(
    model: type[M],
    base: BaseModel | Mapping[str, Any] | None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    source: str = "--set",
) -> M:
    """``base`` with ``overrides`` applied, validated into ``model``: the one override mechanism
    of ``train``, ``ia``, ``evaluate`` and ``study``.

    Parameters
    ----------
    model : type
        The config class to validate into (e.g. :class:`TrainConfig`, :class:`EvalConfig`).
    base : config, mapping or None
        What the overrides apply to: a config object or a mapping of keys (a YAML file's content).
    overrides : list of ``key=value`` strings or mapping, optional
        See :func:`parse_overrides`; dotted keys reach into sections.
    source : str
        Where the values come from, named in the error message.

    Raises
    ------
    ConfigError
        One line naming every bad key and why.
    """
    data = base.model_dump(mode="json") if isinstance(base, BaseModel) else dict(base or {})
    data.pop("version", None)  # written by save_config, informative only
    extra = parse_overrides(overrides)
    data = deep_merge(data, extra)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        blame = extra if source != "--set" and not isinstance(overrides, Mapping) and extra else None
        raise ConfigError(_format_validation_error(e, source, blame)) from None


def build_config(model: type[M], path: str | Path | None = None, overrides: Sequence[str] | None = None) -> M:
    """Load ``path`` (optional; for a :class:`TrainConfig` also a preset name, see
    :func:`resolve_config_file`), apply ``--set`` overrides, validate into ``model``.
    A bad key is blamed on where it came from: the file or ``--set``."""
    if path is not None and model is TrainConfig:
        path = resolve_config_file(path)
    data = read_yaml(path) if path is not None else {}
    return apply_overrides(model, data, overrides, source=str(path) if path else "--set")


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    from deepcluster import __version__

    return {"version": __version__, **cfg.model_dump(mode="json")}
