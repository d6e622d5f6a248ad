"""The YAML description of a hyperparameter study, and the trials it expands to.

A study is a grid of TrainConfig settings (dotted keys → lists of values) times a list of seeds.
Every setting is turned into a full :class:`~deepcluster.core.config.TrainConfig` as soon as the spec
is read, so a misspelt key or a bad value stops the study before anything is trained.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from deepcluster.core.config import (
    EvalConfig,
    StrictModel,
    TrainConfig,
    apply_overrides,
    deep_merge,
    parse_overrides,
    read_yaml,
    resolve_config_file,
)
from deepcluster.core.errors import ConfigError

Scalar = bool | int | float | str | None

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class MetricSpec(StrictModel):
    """What a trial's "accuracy" is: a probe on one layer of the final network."""

    layer: str | None = None  # None: the model's last probe layer
    protocol: Literal["linear", "knn"] = "linear"


class IASpec(StrictModel):
    """Initial Alignment (Deep Dive §4.1) computed next to the trials."""

    seeds: int = Field(0, ge=0)  # networks per setting for its IA distribution; 0: none
    trial: bool = True  # also the IA of each trial's own initialisation
    labelled: int | None = Field(None, ge=2)  # labelled images IA may use (None: all)


class PrescreenSpec(StrictModel):
    """Drop the settings whose median IA is lowest before training (Deep Dive §4.3)."""

    drop_fraction: float = Field(gt=0.0, lt=1.0)
    seeds: int | None = Field(None, ge=2)  # IA networks per setting (default: ia.seeds, or 10)


class SeedSpan(StrictModel):
    """Seeds chosen to span a setting's IA distribution (Deep Dive §4.1.2)."""

    ia_span: int = Field(ge=2)  # how many seeds to train
    pool: int = Field(ge=2)  # drawn from range(pool), at evenly spaced IA quantiles

    @model_validator(mode="after")
    def _check(self) -> SeedSpan:
        if self.pool < self.ia_span:
            raise ValueError(f"pool ({self.pool}) must be at least ia_span ({self.ia_span})")
        return self


class RandomSampler(StrictModel):
    random: int = Field(ge=1)  # number of grid points drawn (without replacement)
    seed: int = 0


class WorkerSpec(StrictModel):
    """Liveness of workers: a RUNNING trial without heartbeat for ``grace_period`` s is retried."""

    heartbeat_interval: int = Field(10, ge=1)
    grace_period: int = Field(60, ge=1)

    @model_validator(mode="after")
    def _check(self) -> WorkerSpec:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("grace_period must be longer than heartbeat_interval")
        return self


class StudySpec(StrictModel):
    """A study file: a base TrainConfig, a grid of overrides, seeds, and what to measure."""

    name: str
    base_config: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Scalar]] = Field(default_factory=dict)
    seeds: list[int] | SeedSpan = Field(default_factory=lambda: [0])
    metric: MetricSpec = Field(default_factory=MetricSpec)
    eval: dict[str, Any] = Field(default_factory=dict)
    ia: IASpec = Field(default_factory=IASpec)
    prescreen: PrescreenSpec | None = None
    sampler: Literal["grid"] | RandomSampler = "grid"
    storage: str | None = None
    workers: WorkerSpec = Field(default_factory=WorkerSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use letters, digits, '.', '_' or '-' (it names the study folder)")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
            if len({json.dumps(x) for x in values}) != len(values):
                raise ValueError(f"grid key {key!r} repeats a value")
            if key == "seed":
                raise ValueError("seed cannot be a grid key: list the seeds under `seeds:`")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | SeedSpan) -> list[int] | SeedSpan:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("give at least one seed, without repeats")
        return v

    @property
    def prescreen_seeds(self) -> int:
        """IA networks per setting used to prescreen."""
        if self.prescreen is None:
            return 0
        return self.prescreen.seeds or self.ia.seeds or 10

    def fingerprint(self) -> dict[str, Any]:
        """What decides the trials' results (not where the study is stored or how workers beat)."""
        return self.model_dump(mode="json", exclude={"storage", "workers", "base_config"})


# --------------------------------------------------------------------------- loading


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study YAML file.

    Parameters
    ----------
    path : str or Path
        The study file.

    Returns
    -------
    StudySpec

    Raises
    ------
    ConfigError
        Unknown keys or bad values, with the key named.
    """
    data = read_yaml(spec_file(path))
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            parts.append(f"{loc}: {msg}")
        raise ConfigError(f"invalid study spec ({path}): " + "; ".join(dict.fromkeys(parts))) from None


def spec_file(path: str | Path) -> Path:
    """A study spec given as a file, or as the name of an installed study (``fmnist_k``)."""
    return resolve_config_file(path, "study")


def resolve_base(spec: StudySpec, spec_path: str | Path) -> Path:
    """The base TrainConfig file, relative to the spec file (or an installed preset's name)."""
    base = Path(spec.base_config).expanduser()
    if not base.is_absolute():
        near = spec_file(spec_path).resolve().parent / base
        base = near if near.is_file() or len(base.parts) > 1 else resolve_config_file(base)
    if not base.is_file():
        raise ConfigError(
            f"study spec {spec_path}: base_config {spec.base_config} not found (looked at {base}); "
            "give a TrainConfig YAML path relative to the spec file"
        )
    return base


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One grid point: the overrides that distinguish it from the other settings."""

    params: tuple[tuple[str, Scalar], ...]

    @property
    def slug(self) -> str:
        return "__".join(f"{k}={_fmt(v)}" for k, v in self.params) or "base"

    def as_dict(self) -> dict[str, Scalar]:
        return dict(self.params)


def trial_slug(setting: Setting, seed: int) -> str:
    """A readable, deterministic folder name for one (setting, seed), e.g. ``k=20__seed=1``."""
    return f"{setting.slug}__seed={seed}" if setting.params else f"seed={seed}"


def _fmt(value: Scalar) -> str:
    if value is None:
        return "off"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)) or "-"


def expand_settings(spec: StudySpec) -> list[Setting]:
    """Every grid point (or the random sample of them ``sampler: {random: N}`` asks for)."""
    keys = list(spec.grid)
    points = [Setting(tuple(zip(keys, combo))) for combo in itertools.product(*(spec.grid[k] for k in keys))]
    if isinstance(spec.sampler, RandomSampler) and spec.sampler.random < len(points):
        rng = np.random.default_rng(spec.sampler.seed)
        chosen = sorted(rng.choice(len(points), size=spec.sampler.random, replace=False).tolist())
        points = [points[i] for i in chosen]
    slugs = [p.slug for p in points]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"study {spec.name}: two grid values print the same ({slugs}); make them distinct")
    return points


def _check_key(key: str, where: str) -> None:
    # Walk TrainConfig's nested sections so a typo gets "did you mean" instead of a bare
    # "unknown key" from pydantic.
    model: type[BaseModel] = TrainConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            prefix = ".".join(parts[:i])
            options = [f"{prefix}.{f}" if prefix else f for f in fields]
            close = difflib.get_close_matches(".".join(parts[: i + 1]), options, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see docs/configuration.md for the keys"
            raise ConfigError(f"{where}: {key!r} is not a TrainConfig key ({hint}); fix the key in the study spec")
        annotation = fields[part].annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise ConfigError(f"{where}: {key!r}: {'.'.join(parts[: i + 1])} is not a section; fix the key in the study spec")
            model = annotation


def setting_config(spec: StudySpec, base: Path, setting: Setting, seed: int) -> TrainConfig:
    """The full TrainConfig of one trial: base file + ``overrides`` + the setting + the seed."""
    overrides = {**spec.overrides, **setting.as_dict(), "seed": seed}
    try:
        return apply_overrides(TrainConfig, read_yaml(base), overrides, source=str(base))
    except ConfigError as e:
        raise ConfigError(f"study {spec.name}, setting {setting.slug}: {e}; fix the grid/overrides in the spec") from None


def eval_config(spec: StudySpec, cfg: TrainConfig, layer: str) -> EvalConfig:
    """The trial's evaluation: the run's ``eval`` section, the spec's ``eval`` overrides on top.

    The raw-pixel baseline is the same for every trial, so it is off unless the spec asks. The
    linear probe is the converged L-BFGS one unless the spec's ``eval`` sets ``probe: sgd``.
    """
    update = deep_merge({"pixel_baseline": False, "layers": [layer], "probe": "lbfgs", "probe_hflip": False},
                        parse_overrides(spec.eval))
    try:
        ecfg = apply_overrides(EvalConfig, cfg.eval, update, source=f"study {spec.name}, eval")
    except ConfigError as e:
        raise ConfigError(f"{e}; see the eval keys in docs/configuration.md") from None
    if ecfg.layers is not None and layer not in ecfg.layers:
        raise ConfigError(f"study {spec.name}: metric.layer {layer} is not in eval.layers {ecfg.layers}; add it")
    return ecfg


def validate_spec(spec: StudySpec, base: Path, seeds: list[int]) -> list[Setting]:
    """Expand the grid and build every setting's TrainConfig, failing on the first bad key."""
    for key in spec.overrides:
        _check_key(key, f"study {spec.name}, overrides")
        if key == "seed":
            raise ConfigError(f"study {spec.name}: set the seeds under `seeds:`, not in overrides")
    for key in spec.grid:
        _check_key(key, f"study {spec.name}, grid key")
    settings = expand_settings(spec)
    for setting in settings:
        for seed in seeds[:1]:
            setting_config(spec, base, setting, seed)
    return settings


def drop_count(n_settings: int, fraction: float) -> int:
    """Settings dropped by prescreening: the lowest ``fraction``, but one is always kept."""
    return min(math.floor(fraction * n_settings + 1e-9), n_settings - 1)
