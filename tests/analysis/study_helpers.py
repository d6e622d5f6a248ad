"""What the study tests share: a tiny spec on digits, worker processes, counting trials."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

BASE = Path(__file__).parents[2] / "configs" / "digits_tiny.yaml"
# Tiny on purpose: a trial (2 cycles on 500 images, probe on 300) takes about a second.
OVERRIDES = {"cycles": 2, "threads": 1, "data.limit": 500, "batch_size": 128}
EVAL = {"train_limit": 300, "test_limit": 100}


def write_spec(path: Path, name: str = "tiny", **fields) -> Path:
    spec = {"name": name, "base_config": str(BASE), "overrides": OVERRIDES, "grid": {"k": [5, 20]},
            "seeds": [0, 1], "metric": {"layer": "conv2", "protocol": "linear"}, "eval": EVAL,
            "workers": {"heartbeat_interval": 1, "grace_period": 2}, **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def quiet(_msg):
    pass


def load(study_dir: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def complete_by_slug(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        counts[t.user_attrs["slug"]] = counts.get(t.user_attrs["slug"], 0) + 1
    return counts


def train_starts(trial_dir: Path) -> int:
    events = [json.loads(x) for x in (trial_dir / "study_log.jsonl").read_text().splitlines()]
    return sum(e["event"] == "train" for e in events)


def worker(spec: Path, out: Path, *extra: str) -> subprocess.Popen:
    """A ``python -m deepcluster study SPEC --out OUT`` worker process."""
    cmd = [sys.executable, "-m", "deepcluster", "study", str(spec), "--out", str(out), "--quiet", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "DEEPCLUSTER_PROGRESS": "0"})


def mid_training(out: Path) -> list[Path]:
    """Trial folders with a finished cycle but no result yet."""
    return [d for d in out.glob("trials/*") if (d / "checkpoint.pt").exists() and not (d / "result.json").exists()]
