"""Hyperparameter studies: a grid of settings × seeds, trained, evaluated and summarised.

A study folder (default ``runs/studies/<name>``) is self-describing::

    spec.yaml            the spec, with base_config pointing at the copy next to it
    base_config.yaml     the base TrainConfig file
    study.json           what decides the results (a rerun with another spec is refused)
    plan.json            the trials (setting × seed), the seeds, the prescreened-out settings
    prescreen.json       IA medians per setting and the compute saved (when prescreening)
    ia/<setting>.json    IA distribution of a setting (``ia.seeds`` / prescreen networks)
    study.db             the optuna storage (SQLite, unless --storage says otherwise)
    trials/<slug>/       one run folder per trial (``k=20__seed=1``) + eval/, ia.json,
                         study_log.jsonl (one line per training start and end, evaluation
                         and IA) and result.json (written last: the trial is finished)
    trials.csv summary.csv summary.md figures/

Optuna coordinates the workers. Every trial is enqueued once (``enqueue_trial``) and workers
pop WAITING trials with ``ask()``; ``ask()`` is serialised by a lock file in the study folder
because SQLite has no ``SELECT ... FOR UPDATE``. A worker beats a heartbeat while it runs a
trial. When a worker dies, its RUNNING trial is failed and enqueued again, either at once (a
worker on the same host sees that the process is gone) or by optuna after ``grace_period``
seconds without heartbeat (workers elsewhere). The rerun resumes the trial's run folder from its
last checkpoint; a trial whose ``result.json`` exists is never trained again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.markup import escape

from deepcluster import __version__
from deepcluster.analysis.progress_log import ProgressLog, duration
from deepcluster.analysis.study_spec import (
    Setting,
    StudySpec,
    drop_count,
    eval_config,
    load_spec,
    resolve_base,
    setting_config,
    trial_slug,
    validate_spec,
)
from deepcluster.analysis.study_summary import StudySummary, summarize_study
from deepcluster.core.config import TrainConfig, read_yaml
from deepcluster.core.errors import (
    ClusteringError,
    ConfigError,
    DeepClusterError,
    TrainingError,
)
from deepcluster.core.files import append_jsonl, read_jsonl, write_json, write_text
from deepcluster.core.progress import console, progress_bar

__all__ = ["StudyResult", "StudySpec", "StudySummary", "load_spec", "run_study", "summarize_study"]

Log = Callable[[str], None]
PLAN_ATTR = "deepcluster_plan"
FINGERPRINT_ATTR = "deepcluster_fingerprint"


@dataclass
class StudyResult:
    """What one ``run_study`` call did.

    Attributes
    ----------
    study_dir : Path
        The study folder.
    storage : str
        The optuna storage URL (password masked).
    trials_run : list[str]
        Slugs of the trials this call trained and/or evaluated.
    trials_reused : list[str]
        Slugs whose result was already in their folder (nothing was recomputed).
    finished : bool
        True when every planned trial is complete (or failed with a recorded error).
    summary : StudySummary or None
        The summary written at the end.
    """

    study_dir: Path
    storage: str
    trials_run: list[str] = field(default_factory=list)
    trials_reused: list[str] = field(default_factory=list)
    finished: bool = False
    summary: StudySummary | None = None


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (released by the kernel if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: one worker at a time is the user's job
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: let the heartbeat decide
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mask(url: str) -> str:
    # postgresql://user:secret@host/db → postgresql://user:***@host/db
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return url


@contextlib.contextmanager
def _heartbeat(storage: Any, trial_id: int, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat now and every ``interval`` seconds until the block ends."""
    stop = threading.Event()

    def beat() -> None:
        # A busy database must not kill the trial: the next beat retries.
        with contextlib.suppress(Exception):
            storage.record_heartbeat(trial_id)

    def loop() -> None:
        while not stop.wait(interval):
            beat()

    beat()
    thread = threading.Thread(target=loop, daemon=True, name=f"heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _with_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 means psycopg 3 by it, and
    our ``postgres`` extra installs psycopg2."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def _open_storage(url: str, spec: StudySpec, heartbeat_interval: int | None, grace_period: int | None):
    import optuna
    import sqlalchemy.exc
    from optuna.exceptions import ExperimentalWarning

    interval = heartbeat_interval or spec.workers.heartbeat_interval
    grace = grace_period or spec.workers.grace_period
    if grace <= interval:
        raise ConfigError(f"grace period ({grace} s) must be longer than the heartbeat interval ({interval} s)")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    url = _with_driver(url)
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=interval, grace_period=grace,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=5),
                )
        except ImportError as e:
            raise ConfigError(f"storage {_mask(url)}: its database driver is missing ({e}); "
                              "pip install it (for PostgreSQL: pip install 'deepcluster[postgres]')") from None
        except (ValueError, sqlalchemy.exc.ArgumentError) as e:
            raise ConfigError(f"storage URL {_mask(url)} is not valid ({e}); "
                              "use e.g. sqlite:///path/study.db or postgresql://user:pw@host/db") from None
        except Exception as e:  # noqa: BLE001 - sqlalchemy's errors: bad URL, unreachable server, a race
            # Workers on other machines may be creating the same tables right now: try again.
            if attempt == 2:
                raise ConfigError(f"cannot open storage {_mask(url)} ({e.__class__.__name__}: {e}); check the URL") from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _quiet_optuna() -> Any:
    import optuna

    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return old


def _restore_optuna(verbosity: Any) -> None:
    import optuna

    optuna.logging.set_verbosity(verbosity)


def _five(values: np.ndarray) -> dict[str, float]:
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return {"min": float(q[0]), "q1": float(q[1]), "median": float(q[2]), "q3": float(q[3]), "max": float(q[4]),
            "mean": float(np.mean(values)), "n": int(values.size)}


# --------------------------------------------------------------------------- the worker


class _Worker:
    def __init__(self, spec_path: Path, spec: StudySpec, study_dir: Path, log: Log, show_progress: bool) -> None:
        self.spec_path, self.spec, self.dir, self.log, self.show_progress = spec_path, spec, study_dir, log, show_progress
        self.base = resolve_base(spec, spec_path)
        first_seeds = spec.seeds if isinstance(spec.seeds, list) else [0]
        self.settings = validate_spec(spec, self.base, first_seeds)
        self.by_slug = {s.slug: s for s in self.settings}
        # Identifies "this machine" for the dead-process check; containers sharing a host name
        # on different machines must set DEEPCLUSTER_WORKER_HOST to tell themselves apart.
        self.host = os.environ.get("DEEPCLUSTER_WORKER_HOST") or socket.gethostname()
        self.layer = self._metric_layer(setting_config(spec, self.base, self.settings[0], first_seeds[0]))
        self.ecfg = eval_config(spec, setting_config(spec, self.base, self.settings[0], first_seeds[0]), self.layer)

    # ---- folder ------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.dir / ".study.lock"

    def trial_dir(self, slug: str) -> Path:
        return self.dir / "trials" / slug

    def _metric_layer(self, cfg: TrainConfig) -> str:
        from deepcluster.data.splits import load_split
        from deepcluster.runs import build_network

        # One image is enough to know the input shape, hence the probe layers.
        sample = load_split(cfg, cfg.data.split, limit=2).images_tensor()
        net = build_network(cfg, int(sample.shape[1]), int(sample.shape[-1]))
        layers = list(net.probe_layers(extra=True))
        layer = self.spec.metric.layer or list(net.probe_layers())[-1]
        if layer not in layers:
            raise ConfigError(f"study {self.spec.name}: metric.layer {layer!r} is not a probe layer of "
                              f"{cfg.model.arch} (its layers: {', '.join(layers)}); fix metric.layer")
        return layer

    def write_description(self) -> None:
        """spec.yaml + base_config.yaml + study.json; refuses a folder made from another spec."""
        base_text = self.base.read_text()
        record = {"name": self.spec.name, "fingerprint": self.spec.fingerprint(), "base": read_yaml(self.base),
                  "metric": {"layer": self.layer, "protocol": self.spec.metric.protocol},
                  "eval": self.ecfg.model_dump(mode="json"), "grid_keys": list(self.spec.grid),
                  "base_config_source": str(self.base), "version": __version__}
        path = self.dir / "study.json"
        if path.exists():
            old = json.loads(path.read_text())
            if (old.get("fingerprint"), old.get("base")) != (record["fingerprint"], record["base"]):
                raise ConfigError(
                    f"{self.dir} holds study {old.get('name')!r} made from a different spec or base config; "
                    "use another --out (or restore the spec in the folder's spec.yaml)"
                )
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        copied = self.spec.model_dump(mode="json")
        copied["base_config"] = "base_config.yaml"
        write_text(self.dir / "base_config.yaml", base_text)
        write_text(self.dir / "spec.yaml", f"# study spec, copied from {self.spec_path}\n"
                   f"# (base_config was {self.spec.base_config}; its copy is base_config.yaml)\n"
                   + yaml.safe_dump(copied, sort_keys=False))
        write_json(path, record)

    # ---- IA ------------------------------------------------------------------
    def seed_for_distribution(self) -> int:
        return self.spec.seeds[0] if isinstance(self.spec.seeds, list) else 0

    def setting_ia(self, setting: Setting, n: int) -> dict[str, Any]:
        """IA of ``n`` networks (seeds 0..n-1) under ``setting``, cached in ``ia/<setting>.json``
        (``"cached": True`` in the record when it was read from there)."""
        path = self.dir / "ia" / f"{setting.slug}.json"
        if path.exists():
            cached = json.loads(path.read_text())
            if len(cached["values"]) >= n:
                values = np.asarray(cached["values"][:n])
                return {**cached, "seeds": cached["seeds"][:n], "values": values.tolist(), "summary": _five(values),
                        "cached": True}
        from deepcluster.analysis.alignment import initial_alignment

        cfg = setting_config(self.spec, self.base, setting, self.seed_for_distribution())
        res = initial_alignment(cfg, list(range(n)), labelled=self.spec.ia.labelled, show_progress=False,
                                log=self.progress_log)
        values = np.asarray(res.values, dtype=float)
        record = {"setting": setting.slug, "params": setting.as_dict(), "seeds": [int(s) for s in res.seeds],
                  "values": values.tolist(), "summary": _five(values)}
        write_json(path, record)
        return record

    @property
    def progress_log(self) -> Log | None:
        """Where progress lines of long steps go: the study's log, unless progress is off (--quiet)."""
        return self.log if self.show_progress else None

    def _distributions(self, settings: list[Setting], n: int, what: str) -> dict[str, dict[str, Any]]:
        """IA of ``n`` random networks per setting: one line per setting (its median, seconds and
        the time left), so that the phase shows in a log file too."""
        self.log(f"IA distributions ({what}): {len(settings)} settings × {n} random networks "
                 "(each network's features of the training images, clustered as cycle 1 would)")
        out = {}
        start, computed = time.perf_counter(), 0
        with progress_bar("IA distributions", len(settings), enabled=self.show_progress) as advance:
            for i, s in enumerate(settings):
                t0 = time.perf_counter()
                out[s.slug] = record = self.setting_ia(s, n)
                advance(1)
                if record.pop("cached", False):
                    if self.show_progress:
                        self.log(f"IA {s.slug}: median {record['summary']['median']:.3f} (from ia/{s.slug}.json)")
                    continue
                computed += 1
                if not self.show_progress:
                    continue
                left = len(settings) - i - 1
                eta = f"; about {duration((time.perf_counter() - start) / computed * left)} left" if left else ""
                self.log(f"IA {s.slug}: median {record['summary']['median']:.3f} over {n} networks "
                         f"({duration(time.perf_counter() - t0)}); {i + 1}/{len(settings)} settings{eta}")
        return out

    def span_seeds(self) -> tuple[list[int], dict[str, Any]]:
        """Deep Dive §4.1.2: seeds at evenly spaced quantiles of IA over ``range(pool)``.

        Each candidate's IA is computed exactly as its trial's would be (its own ``seed``, so its
        own ``data.limit`` subset), under the first setting; seeds are shared by all settings.
        """
        from deepcluster.analysis.alignment import initial_alignment

        span, setting = self.spec.seeds, self.settings[0]
        assert not isinstance(span, list)
        self.log(f"IA of {span.pool} candidate seeds, to pick {span.ia_span} spanning its range")
        values = []
        ticker = ProgressLog(self.progress_log, "IA of candidate seeds", span.pool, unit="seeds", every=15.0)
        with progress_bar("IA of candidate seeds", span.pool, enabled=self.show_progress) as advance:
            for seed in range(span.pool):
                cfg = setting_config(self.spec, self.base, setting, seed)
                net_seed = int(getattr(cfg, "network_seed", cfg.seed))
                res = initial_alignment(cfg, [net_seed], labelled=self.spec.ia.labelled, show_progress=False)
                values.append(float(res.values[0]))
                advance(1)
                ticker.update(len(values))
        order = np.argsort(values, kind="stable")
        picks = [int(i) for i in order[np.round(np.linspace(0, span.pool - 1, span.ia_span)).astype(int)]]
        choice = {"setting": setting.slug, "pool": span.pool, "ia": values, "picked": picks,
                  "summary": _five(np.asarray(values))}
        write_json(self.dir / "seed_choice.json", choice)
        self.log(f"seeds spanning IA {min(values):.3f}–{max(values):.3f}: {picks}")
        return picks, {k: v for k, v in choice.items() if k != "ia"}

    # ---- plan ----------------------------------------------------------------
    def make_plan(self) -> dict[str, Any]:
        """Seeds, prescreening and the list of trials. Runs once per study, before any training."""
        spec = self.spec
        if isinstance(spec.seeds, list):
            seeds, seed_choice = list(spec.seeds), None
        else:
            seeds, seed_choice = self.span_seeds()

        n_ia = max(spec.ia.seeds, spec.prescreen_seeds)
        dists = self._distributions(self.settings, n_ia, "per setting") if n_ia else {}

        dropped: list[str] = []
        if spec.prescreen is not None:
            n_pre = spec.prescreen_seeds
            medians = {s.slug: float(np.median(dists[s.slug]["values"][:n_pre])) for s in self.settings}
            ranked = sorted(self.settings, key=lambda s: medians[s.slug])  # stable: ties keep grid order
            dropped = [s.slug for s in ranked[: drop_count(len(self.settings), spec.prescreen.drop_fraction)]]
            total = len(self.settings) * len(seeds)
            write_json(self.dir / "prescreen.json", {
                "drop_fraction": spec.prescreen.drop_fraction, "ia_seeds": n_pre, "median_ia": medians,
                "dropped": dropped, "kept": [s.slug for s in self.settings if s.slug not in dropped],
                "dropped_trials": len(dropped) * len(seeds), "total_trials": total,
                "fraction_saved": len(dropped) * len(seeds) / total,
            })
            self.log(f"prescreen: dropped {len(dropped)}/{len(self.settings)} settings with the lowest median IA "
                     f"({', '.join(dropped) or 'none'}): {len(dropped) * len(seeds)}/{total} trials saved")

        # seed-major: the first seed's trials of every setting come first, so that a study stopped
        # early (--max-trials, a session's end) holds complete replicates, one seed after another
        trials = [{"slug": trial_slug(s, seed), "setting": s.slug, "params": {**s.as_dict(), "seed": seed}}
                  for seed in seeds for s in self.settings if s.slug not in dropped]
        plan = {"seeds": seeds, "seed_choice": seed_choice, "dropped": dropped,
                "settings": [{"slug": s.slug, "params": s.as_dict()} for s in self.settings], "trials": trials}
        write_json(self.dir / "plan.json", plan)
        return plan


# --------------------------------------------------------------------------- running


def run_study(
    spec_path: str | Path,
    out_dir: str | Path | None = None,
    storage: str | None = None,
    show_progress: bool = True,
    max_trials: int | None = None,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    retry_failed: bool = False,
    wait: bool = True,
    log: Log | None = None,
) -> StudyResult:
    """Run (or continue, or help with) a study: train and evaluate every WAITING trial.

    Safe to start several times on one storage (several workers), and to restart after a kill:
    finished trials are never re-run, a killed trial resumes from its last checkpoint.

    Parameters
    ----------
    spec_path : str or Path
        The study YAML file, or a study folder (continued in place, from its ``spec.yaml``).
    out_dir : str or Path, optional
        The study folder (default ``runs/studies/<name>``).
    storage : str, optional
        Optuna storage URL, e.g. ``postgresql://user:pw@host/db`` (default: the spec's
        ``storage``, else ``sqlite:///<study folder>/study.db``).
    show_progress : bool
        Progress bars of training, evaluation and IA.
    max_trials : int, optional
        Run at most this many trials, then return (0: only prepare the study: IA, prescreen,
        queue). None: until no trial is left.
    heartbeat_interval, grace_period : int, optional
        Seconds; override the spec's ``workers`` section. A trial whose worker died elsewhere is
        retried ``grace_period`` s after its last heartbeat (at once when the dead worker ran on
        this host).
    retry_failed : bool
        Also retry trials that failed with an error (diverged training) in an earlier run.
    wait : bool
        When no trial is waiting but others are still running (other workers), wait for them so
        that the summary covers the whole study.
    log : callable, optional
        Receives one line per event (default: printed on stderr).

    Returns
    -------
    StudyResult
    """
    log = log or (lambda msg: console.print(msg, highlight=False, soft_wrap=True))
    spec_path, spec, study_dir = _locate(spec_path, out_dir)
    worker = _Worker(spec_path, spec, study_dir, log, show_progress)
    worker.write_description()

    url = storage or spec.storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    result = StudyResult(study_dir=study_dir, storage=_mask(url))
    old_verbosity = _quiet_optuna()
    try:
        rdb, study, plan = _open_study(worker, url, heartbeat_interval, grace_period, retry_failed)
        _run_trials(study, rdb, worker, plan, result, max_trials=max_trials, wait=wait)
        result.finished = _finished(study, plan)
    finally:
        _restore_optuna(old_verbosity)

    result.summary = summarize_study(study_dir, log=log)
    return result


def _locate(spec_path: str | Path, out_dir: str | Path | None) -> tuple[Path, StudySpec, Path]:
    """The spec file, the spec read from it, and the study folder (a folder given as ``spec_path``
    is continued in place, from its ``spec.yaml``)."""
    spec_path = Path(spec_path)
    if spec_path.is_dir():
        out_dir = spec_path if out_dir is None else out_dir
        spec_path = spec_path / "spec.yaml"
    spec = load_spec(spec_path)
    study_dir = Path(out_dir) if out_dir is not None else Path("runs") / "studies" / spec.name
    return spec_path, spec, study_dir


def _open_study(worker: _Worker, url: str, heartbeat_interval: int | None, grace_period: int | None,
                retry_failed: bool) -> tuple[Any, Any, dict[str, Any]]:
    """The optuna storage, the study and its plan (made by the first worker), with the trials of dead
    workers of this host re-enqueued and every unfinished planned trial queued.

    All under the study lock: two workers creating the tables of a new SQLite file at once collide,
    and the plan must be made and its trials enqueued once.
    """
    import optuna

    spec = worker.spec
    with _file_lock(worker.lock_path):
        rdb = _open_storage(url, spec, heartbeat_interval, grace_period)
        study = optuna.create_study(study_name=spec.name, storage=rdb, load_if_exists=True,
                                    direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        fp = json.loads(json.dumps(spec.fingerprint()))
        known = study.user_attrs.get(FINGERPRINT_ATTR)
        if known is not None and known != fp:
            raise ConfigError(f"storage {_mask(url)} already holds a study {spec.name!r} with a different spec; "
                              "rename the study (name:) or use another --storage")
        plan = study.user_attrs.get(PLAN_ATTR)
        if plan is None:
            plan = worker.make_plan()
            study.set_user_attr(FINGERPRINT_ATTR, fp)
            study.set_user_attr(PLAN_ATTR, plan)
        elif not (worker.dir / "plan.json").exists():
            write_json(worker.dir / "plan.json", plan)
        _reap(study, worker, plan)
        _reconcile(study, plan, retry_failed, worker.log)
    return rdb, study, plan


def _run_trials(study, rdb: Any, worker: _Worker, plan: dict[str, Any], result: StudyResult, *,
                max_trials: int | None, wait: bool) -> None:
    """Take WAITING trials one at a time and run them, until none is left (or ``max_trials``).

    With ``wait``, a worker that finds no trial waiting while others still run waits for them.
    """
    entries = {t["slug"]: t for t in plan["trials"]}
    choices = _choices(plan)
    asked, waiting_logged = 0, False
    while max_trials is None or asked < max_trials:
        trial, running = _take_trial(study, rdb, worker, plan)
        if trial is None:
            if running and wait:
                if not waiting_logged:
                    worker.log(f"no trial left to start; waiting for {running} running in other workers "
                               f"(a dead one elsewhere is retried {rdb.grace_period} s after its last heartbeat)")
                    waiting_logged = True
                time.sleep(rdb.heartbeat_interval)
                continue
            break
        waiting_logged = False
        asked += 1
        with _heartbeat(rdb, trial._trial_id, rdb.heartbeat_interval):
            _run_one(study, trial, worker, entries, choices, result)


def _take_trial(study, rdb: Any, worker: _Worker, plan: dict[str, Any]) -> tuple[Any, int]:
    """Under the study lock: fail the trials of dead workers, then ``ask()`` for a WAITING trial (None
    when there is none) and mark it as this worker's. Also returns how many trials are RUNNING."""
    import optuna
    from optuna.trial import TrialState

    with _file_lock(worker.lock_path):
        _reap(study, worker, plan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not waiting:
            return None, len(running)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is meant for optimize()": we beat ourselves
            trial = study.ask()
        rdb.record_heartbeat(trial._trial_id)  # at once: a trial never beaten never goes stale
        trial.set_user_attr("worker_host", worker.host)
        trial.set_user_attr("worker_pid", os.getpid())
    return trial, len(running)


def _choices(plan: dict[str, Any]) -> dict[str, list[Any]]:
    choices: dict[str, list[Any]] = defaultdict(list)
    for t in plan["trials"]:
        for k, v in t["params"].items():
            if v not in choices[k]:
                choices[k].append(v)
    return dict(choices)


def _slug_states(study) -> dict[str, list[Any]]:
    by_slug: dict[str, list[Any]] = defaultdict(list)
    for t in study.get_trials(deepcopy=False):
        slug = t.user_attrs.get("slug")
        if slug and not t.user_attrs.get("ignored"):
            by_slug[slug].append(t)
    return by_slug


def _reconcile(study, plan: dict[str, Any], retry_failed: bool, log: Log) -> None:
    """Enqueue every planned trial that is neither complete, queued nor running.

    Idempotent, and run under the study lock, so workers starting together enqueue each trial once.
    """
    from optuna.trial import TrialState

    by_slug = _slug_states(study)
    added = 0
    for entry in plan["trials"]:
        states = {t.state for t in by_slug.get(entry["slug"], [])}
        if states & {TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING}:
            continue
        errored = any(t.state == TrialState.FAIL and t.user_attrs.get("error") for t in by_slug.get(entry["slug"], []))
        if errored and not retry_failed:
            continue
        study.enqueue_trial(entry["params"], user_attrs={"slug": entry["slug"]})
        added += 1
    if added:
        log(f"queued {added} trial(s)")


def _reap(study, worker: _Worker, plan: dict[str, Any]) -> None:
    """Fail and re-enqueue the RUNNING trials of workers that died on this host (no grace wait)."""
    from optuna.trial import TrialState

    entries = {t["slug"]: t for t in plan["trials"]}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker_host") != worker.host or _pid_alive(t.user_attrs.get("worker_pid")):
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        slug = t.user_attrs.get("slug")
        if slug in entries:
            study.enqueue_trial(entries[slug]["params"], user_attrs={"slug": slug})
            worker.log(f"trial {slug}: its worker (pid {t.user_attrs.get('worker_pid')}) is gone; queued again")


def _finished(study, plan: dict[str, Any]) -> bool:
    from optuna.trial import TrialState

    by_slug = _slug_states(study)
    for entry in plan["trials"]:
        ts = by_slug.get(entry["slug"], [])
        if not any(t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.user_attrs.get("error"))
                   for t in ts):
            return False
    return True


def _run_one(study, trial, worker: _Worker, entries: dict[str, Any], choices: dict[str, list[Any]],
             result: StudyResult) -> None:
    from optuna.trial import TrialState

    slug = trial.user_attrs.get("slug")
    if slug not in entries:
        # ask() created a fresh trial: another worker took the last WAITING one first.
        trial.set_user_attr("ignored", "no queued trial left when asked")
        study.tell(trial, state=TrialState.PRUNED)
        return
    entry = entries[slug]
    params = {k: trial.suggest_categorical(k, choices[k]) for k in entry["params"]}
    if params != entry["params"]:
        trial.set_user_attr("ignored", f"params {params} do not match the plan")
        study.tell(trial, state=TrialState.PRUNED)
        return
    try:
        record, reused = _execute(worker, entry)
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(entry["params"], user_attrs={"slug": slug})
        raise
    except (TrainingError, ClusteringError) as e:
        # A result of this setting (e.g. diverged), not a crash: recorded, not retried by default.
        write_json(worker.trial_dir(slug) / "error.json", {"slug": slug, "error": str(e), "kind": e.__class__.__name__})
        trial.set_user_attr("error", str(e))
        study.tell(trial, state=TrialState.FAIL)
        worker.log(f"[red]trial {slug} failed:[/] {escape(str(e))}")
        return
    except BaseException as e:
        trial.set_user_attr("crash", f"{e.__class__.__name__}: {e}")
        study.tell(trial, state=TrialState.FAIL)
        raise
    (result.trials_reused if reused else result.trials_run).append(slug)
    for key in ("accuracy", "nmi", "nmi_labels_final", "ia", "seconds"):
        trial.set_user_attr(key, record.get(key))
    trial.set_user_attr("trial_dir", f"trials/{slug}")
    try:
        study.tell(trial, record["accuracy"])
    except (ValueError, RuntimeError) as e:
        # The trial was declared dead meanwhile (no heartbeat for the grace period) and queued
        # again; its result.json is on disk, so that copy will only read it.
        worker.log(f"[yellow]trial {slug}: could not record the result in the storage ({escape(str(e))}); kept in its folder[/]")


def _execute(worker: _Worker, entry: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Train (or resume), evaluate and measure one trial; returns its record and whether it was reused."""
    from deepcluster.runs import RunFolder

    slug = entry["slug"]
    tdir = worker.trial_dir(slug)
    # A second process holding the same trial (only after a false "dead worker" verdict) waits
    # here, then finds result.json and reads it instead of training twice.
    with _file_lock(worker.dir / ".locks" / f"{slug}.lock"):
        result_path = tdir / "result.json"
        if result_path.exists():
            worker.log(f"trial {slug}: already finished, reading its result")
            return json.loads(result_path.read_text()), True
        tdir.mkdir(parents=True, exist_ok=True)
        setting = worker.by_slug[entry["setting"]]
        cfg = setting_config(worker.spec, worker.base, setting, entry["params"]["seed"])
        run = RunFolder(tdir)
        cfg = _train_trial(worker, run, cfg, slug)
        ia = _trial_ia(worker, run.load_config(), tdir)  # of the initialisation the run really used
        evaluation = _evaluate_trial(worker, cfg, slug, tdir)
        record = _trial_record(worker, entry, setting, cfg, run, evaluation, ia)
        write_json(result_path, record)
        (tdir / "error.json").unlink(missing_ok=True)  # from an earlier failed attempt (--retry-failed)
        worker.log(f"trial {slug}: accuracy {record['accuracy']:.4f}  NMI {record['nmi']:.3f}"
                   + (f"  IA {ia:.3f}" if ia is not None else ""))
        return record, False


def _train_trial(worker: _Worker, run, cfg: TrainConfig, slug: str) -> TrainConfig:
    """Train the trial's run folder ``run`` to ``cfg.cycles``: from the start, or resumed from its
    last checkpoint; nothing when it is already there. Returns ``cfg``, with its ``init=best_ia:N``
    resolved when training starts here."""
    from deepcluster.analysis.alignment import resolve_init
    from deepcluster.train import train

    done_cycle = _checkpoint_cycle(run)
    if done_cycle >= cfg.cycles:
        return cfg
    tdir, log_path = run.path, run.path / "study_log.jsonl"
    t0 = time.perf_counter()
    how = f"resuming from cycle {done_cycle + 1}" if done_cycle else "training"
    worker.log(f"trial {slug}: {how} ({cfg.cycles} cycles)")
    append_jsonl(log_path, {"event": "train", "from_cycle": done_cycle + 1, "pid": os.getpid(),
                            "host": worker.host, "time": time.time()})
    # A resumed run continues from its own config.yaml: it holds what training decided
    # (e.g. the init seed that init=best_ia:N picked).
    if done_cycle:
        train(run.load_config(), tdir, resume=True, show_progress=worker.show_progress)
    else:
        cfg, init_ia = resolve_init(cfg, show_progress=worker.show_progress)
        train(cfg, tdir, init_ia=init_ia, show_progress=worker.show_progress)
    append_jsonl(log_path, {"event": "trained", "seconds": round(time.perf_counter() - t0, 2)})
    return cfg


def _evaluate_trial(worker: _Worker, cfg: TrainConfig, slug: str, tdir: Path) -> dict[str, Any]:
    """The trial's evaluation (``eval/evaluation_last.json``), computed unless it is already there."""
    from deepcluster.evaluate import evaluate_run

    eval_path = tdir / "eval" / "evaluation_last.json"
    if eval_path.exists():
        return json.loads(eval_path.read_text())
    t0 = time.perf_counter()
    worker.log(f"trial {slug}: evaluating ({worker.layer}, {worker.spec.metric.protocol})")
    evaluation = evaluate_run(tdir, eval_config(worker.spec, cfg, worker.layer), compare_random=False, out=tdir / "eval",
                              show_progress=worker.show_progress, log=lambda m: None)
    append_jsonl(tdir / "study_log.jsonl", {"event": "evaluated", "seconds": round(time.perf_counter() - t0, 2)})
    return evaluation


def _trial_record(worker: _Worker, entry: dict[str, Any], setting: Setting, cfg: TrainConfig, run,
                  evaluation: dict[str, Any], ia: float | None) -> dict[str, Any]:
    """What ``result.json`` holds: the trial's metric, probes, clustering quality, IA and seconds."""
    spec, layer = worker.spec, worker.layer
    trained = evaluation["models"]["trained"]
    clustering = trained["clustering"]
    metrics = run.metrics()
    events = read_jsonl(run.path / "study_log.jsonl")
    return {
        "slug": entry["slug"], "setting": setting.slug, "params": entry["params"], "seed": entry["params"]["seed"],
        "metric": {"layer": layer, "protocol": spec.metric.protocol},
        "accuracy": float(trained["layers"][layer][spec.metric.protocol]),
        "linear": trained["layers"][layer]["linear"], "knn": trained["layers"][layer]["knn"],
        "nmi": clustering.get("nmi"), "ari": clustering.get("ari"), "kmeans_acc": clustering.get("acc"),
        "nmi_labels_final": metrics[-1].get("nmi_labels") if metrics else None,
        "ia": ia,
        "cycles": cfg.cycles,
        "seconds": round(sum(e.get("seconds", 0.0) for e in events), 2),
        "train_starts": sum(e["event"] == "train" for e in events),
        "evaluation": "eval/evaluation_last.json",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _checkpoint_cycle(run) -> int:
    if not run.checkpoint_path.exists():
        return 0
    try:
        return int(run.load_checkpoint("last")["cycle"])
    except DeepClusterError:
        return 0  # unreadable: train again from the start


def _trial_ia(worker: _Worker, cfg: TrainConfig, tdir: Path) -> float | None:
    if not worker.spec.ia.trial:
        return None
    path = tdir / "ia.json"
    if path.exists():
        return float(json.loads(path.read_text())["ia"])
    from deepcluster.analysis.alignment import initial_alignment

    t0 = time.perf_counter()
    seed = int(getattr(cfg, "network_seed", cfg.seed))  # the seed the weights are drawn from
    value = float(initial_alignment(cfg, [seed], labelled=worker.spec.ia.labelled,
                                    show_progress=worker.show_progress).values[0])
    write_json(path, {"seed": seed, "ia": value})
    append_jsonl(tdir / "study_log.jsonl", {"event": "ia", "seconds": round(time.perf_counter() - t0, 2)})
    return value
