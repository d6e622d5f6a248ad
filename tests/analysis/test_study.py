"""Hyperparameter studies on scikit-learn's digits: grid × seeds, kills, workers, prescreening."""

import json
import signal
import time

import optuna
import pytest
import typer
from optuna.trial import TrialState
from typer.testing import CliRunner

from deepcluster.analysis.study import load_spec, run_study, summarize_study
from deepcluster.analysis.study_spec import expand_settings, trial_slug
from deepcluster.core.errors import ConfigError

from .study_helpers import (
    BASE,
    OVERRIDES,
    complete_by_slug,
    load,
    mid_training,
    quiet,
    train_starts,
    worker,
    write_spec,
)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    spec = write_spec(root / "spec.yaml", ia={"seeds": 3})
    result = run_study(spec, root / "out", show_progress=False, log=quiet)
    return spec, result


# --------------------------------------------------------------------------- a whole study


def test_tiny_study_runs_to_completion(tiny_study):
    result = tiny_study[1]
    out = result.study_dir
    slugs = ["k=5__seed=0", "k=5__seed=1", "k=20__seed=0", "k=20__seed=1"]
    assert result.finished and sorted(result.trials_run) == sorted(slugs)
    for name in ["spec.yaml", "base_config.yaml", "study.json", "plan.json", "study.db", "trials.csv",
                 "summary.csv", "summary.md", "figures/accuracy_vs_k.png", "figures/ia_vs_accuracy.png",
                 "figures/median_ia_vs_accuracy.png", "ia/k=5.json", "ia/k=20.json"]:
        assert (out / name).is_file(), name
    # the copied spec describes the study on its own: it loads, and its base config is next to it
    assert load_spec(out / "spec.yaml").grid == {"k": [5, 20]}
    for slug in slugs:
        res = json.loads((out / "trials" / slug / "result.json").read_text())
        assert 0 < res["accuracy"] <= 1 and 0 <= res["nmi"] <= 1 and 0 <= res["ia"] <= 1
        assert (out / "trials" / slug / "eval" / "evaluation_last.json").is_file()
        assert (out / "trials" / slug / "checkpoint.pt").is_file()

    study = load(out)
    assert complete_by_slug(study) == {s: 1 for s in slugs}
    t = study.get_trials(states=(TrialState.COMPLETE,))[0]
    assert {"accuracy", "nmi", "nmi_labels_final", "ia"} <= set(t.user_attrs)
    assert t.value == t.user_attrs["accuracy"] and t.params["seed"] in (0, 1)

    s = result.summary
    assert [r["setting"] for r in s.settings] == ["k=5", "k=20"]
    assert all(r["n"] == 2 and r["status"] == "trained" and r["ia_dist_n"] == 3 for r in s.settings)
    assert s.spearman is not None and -1 <= s.spearman["rho"] <= 1
    lines = (out / "trials.csv").read_text().splitlines()
    assert lines[0].startswith("slug,setting,k,seed,accuracy") and len(lines) == 5
    md = (out / "summary.md").read_text()
    assert "| k | status | n | accuracy |" in md and "Spearman" in md


def test_rerun_of_a_finished_study_trains_nothing(tiny_study):
    spec, first = tiny_study
    before = {p: p.stat().st_mtime_ns for p in first.study_dir.glob("trials/*/result.json")}
    again = run_study(spec, first.study_dir, show_progress=False, log=quiet)
    assert again.finished and again.trials_run == [] and again.trials_reused == []
    # the folder alone (its spec.yaml + base_config.yaml copies) continues the same study
    again = run_study(first.study_dir, show_progress=False, log=quiet)
    assert again.study_dir == first.study_dir and again.finished and again.trials_run == []
    changed = write_spec(spec.parent / "changed.yaml", ia={"seeds": 3}, seeds=[0, 1, 2])
    with pytest.raises(ConfigError, match="different spec"):
        run_study(changed, first.study_dir, show_progress=False, log=quiet)
    assert {p: p.stat().st_mtime_ns for p in first.study_dir.glob("trials/*/result.json")} == before


def test_summarize_only_from_the_cli(tiny_study):
    from deepcluster.cli.study import register

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    res = CliRunner().invoke(app, ["study", str(tiny_study[1].study_dir), "--summarize-only"])
    assert res.exit_code == 0, res.output
    assert "study tiny: 4 trials finished" in res.output and "trained" in res.output
    assert "summary.md" in res.output


# --------------------------------------------------------------------------- resume and workers


@pytest.mark.slow
def test_kill_mid_study_then_restart_reruns_nothing_finished(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", ia={"trial": False}, overrides={**OVERRIDES, "cycles": 6})
    out = tmp_path / "out"
    proc = worker(spec, out)
    deadline = time.time() + 120
    # kill -9 once the first trial is finished and the second is half-way through its cycles
    while time.time() < deadline and not (list(out.glob("trials/*/result.json")) and mid_training(out)):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.read_text() for p in out.glob("trials/*/result.json")}
    interrupted = [d.name for d in mid_training(out)]
    assert 1 <= len(finished) < 4 and len(interrupted) == 1

    # Restarted on the same host, the dead worker's RUNNING trial is retried at once (no grace wait).
    logs: list[str] = []
    result = run_study(spec, out, show_progress=False, log=logs.append)
    assert result.finished
    assert not set(result.trials_run) & set(finished)
    for slug, text in finished.items():
        assert (out / "trials" / slug / "result.json").read_text() == text
        assert train_starts(out / "trials" / slug) == 1
    study = load(out)
    planned = [t["slug"] for t in json.loads((out / "plan.json").read_text())["trials"]]
    assert complete_by_slug(study) == {slug: 1 for slug in planned}
    for slug in interrupted:  # resumed from its checkpoint, in its own folder
        assert any(f"{slug}: its worker" in m for m in logs)
        events = [json.loads(x) for x in (out / "trials" / slug / "study_log.jsonl").read_text().splitlines()]
        starts = [e["from_cycle"] for e in events if e["event"] == "train"]
        assert len(starts) == 2 and starts[0] == 1 and starts[1] > 1


def test_dead_worker_elsewhere_is_retried_after_the_grace_period(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", grid={"k": [5]}, seeds=[0], ia={"trial": False})
    out = tmp_path / "out"
    run_study(spec, out, show_progress=False, max_trials=0, log=quiet)  # prepare the queue only
    # A worker on another machine takes the trial, beats once, and dies.
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.load_study(study_name="tiny", storage=storage)
    trial = study.ask()
    trial.set_user_attr("worker_host", "elsewhere")
    trial.set_user_attr("worker_pid", 12345)
    storage.record_heartbeat(trial._trial_id)

    t0 = time.time()
    result = run_study(spec, out, show_progress=False, log=quiet)
    assert result.finished and result.trials_run == ["k=5__seed=0"]
    assert time.time() - t0 >= 2  # waited for the grace period
    states = [t.state for t in load(out).get_trials()]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 1


@pytest.mark.slow
def test_two_workers_run_each_trial_exactly_once(tmp_path):
    # 6 trials of ~1.5 s: long enough that both workers, started together, get some
    spec = write_spec(tmp_path / "spec.yaml", seeds=[0, 1, 2], ia={"trial": False}, overrides={**OVERRIDES, "cycles": 3})
    out = tmp_path / "out"
    procs = [worker(spec, out), worker(spec, out)]
    for p in procs:
        assert p.wait(240) == 0, p.stdout.read()
    study = load(out)
    slugs = [trial_slug(s, seed) for s in expand_settings(load_spec(spec)) for seed in (0, 1, 2)]
    assert complete_by_slug(study) == {s: 1 for s in slugs}
    for slug in slugs:
        assert train_starts(out / "trials" / slug) == 1
    assert len({t.user_attrs["worker_pid"] for t in study.get_trials(states=(TrialState.COMPLETE,))}) == 2
    assert all(t.user_attrs.get("ignored") for t in study.get_trials(states=(TrialState.PRUNED,)))


# --------------------------------------------------------------------------- spec errors, prescreening


def test_typo_in_a_grid_key_fails_before_training(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", grid={"kk": [5, 20]})
    with pytest.raises(ConfigError, match=r"'kk' is not a TrainConfig key \(did you mean 'k'\?\)"):
        run_study(spec, tmp_path / "out", show_progress=False, log=quiet)
    assert not (tmp_path / "out").exists()

    spec = write_spec(tmp_path / "spec2.yaml", grid={"data.limt": [100]})
    with pytest.raises(ConfigError, match="data.limit"):
        run_study(spec, tmp_path / "out", show_progress=False, log=quiet)

    spec = write_spec(tmp_path / "spec3.yaml", grid={"k": [1, 5]})
    with pytest.raises(ConfigError, match="setting k=1.*k:"):
        run_study(spec, tmp_path / "out", show_progress=False, log=quiet)

    from deepcluster.cli.study import register

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    res = CliRunner().invoke(app, ["study", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "did you mean 'k'" in res.output and "Traceback" not in res.output


def test_spec_validation_and_sampling(tmp_path):
    spec = load_spec(write_spec(tmp_path / "a.yaml", grid={"pca_dim": [None, 8], "k": [5, 10, 20]},
                                sampler={"random": 3}))
    settings = expand_settings(spec)
    assert len(settings) == 3 and settings == expand_settings(spec)  # deterministic
    assert trial_slug(expand_settings(load_spec(write_spec(tmp_path / "b.yaml", grid={"pca_dim": [None]})))[0], 2) \
        == "pca_dim=off__seed=2"
    with pytest.raises(ConfigError, match="seed cannot be a grid key"):
        load_spec(write_spec(tmp_path / "c.yaml", grid={"seed": [1, 2]}))
    with pytest.raises(ConfigError, match="grdi: unknown key"):
        load_spec(write_spec(tmp_path / "d.yaml", grdi={"k": [5]}))


def test_prescreen_drops_the_setting_with_the_lowest_median_ia(tmp_path):
    # PCA to 1 dimension + L2 leaves every image at ±1: k-means cannot align with the classes.
    spec = write_spec(tmp_path / "spec.yaml", grid={"pca_dim": [1, 16]}, seeds=[0, 1],
                      prescreen={"drop_fraction": 0.5, "seeds": 3})
    result = run_study(spec, tmp_path / "out", show_progress=False, max_trials=0, log=quiet)
    pre = json.loads((result.study_dir / "prescreen.json").read_text())
    assert pre["dropped"] == ["pca_dim=1"] and pre["kept"] == ["pca_dim=16"]
    assert pre["median_ia"]["pca_dim=1"] < pre["median_ia"]["pca_dim=16"]
    assert (pre["dropped_trials"], pre["total_trials"], pre["fraction_saved"]) == (2, 4, 0.5)
    plan = json.loads((result.study_dir / "plan.json").read_text())
    assert [t["slug"] for t in plan["trials"]] == ["pca_dim=16__seed=0", "pca_dim=16__seed=1"]
    queued = load(result.study_dir).get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["slug"] for t in queued) == ["pca_dim=16__seed=0", "pca_dim=16__seed=1"]
    summary = summarize_study(result.study_dir)
    assert [r["status"] for r in summary.settings] == ["dropped", "pending"]
    assert "IA pre-screening" in (result.study_dir / "summary.md").read_text()


@pytest.mark.parametrize("preset", sorted((BASE.parent / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_study_presets_are_valid(preset):
    from deepcluster.analysis.study_spec import resolve_base, validate_spec

    spec = load_spec(preset)
    assert spec.name == preset.stem
    settings = validate_spec(spec, resolve_base(spec, preset), spec.seeds if isinstance(spec.seeds, list) else [0])
    assert settings


def test_seeds_chosen_to_span_the_ia_range(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", grid={}, seeds={"ia_span": 2, "pool": 4}, ia={"trial": False})
    result = run_study(spec, tmp_path / "out", show_progress=False, max_trials=0, log=quiet)
    choice = json.loads((result.study_dir / "seed_choice.json").read_text())
    ia = choice["ia"]
    assert choice["picked"] == [ia.index(min(ia)), ia.index(max(ia))]
    plan = json.loads((result.study_dir / "plan.json").read_text())
    assert [t["slug"] for t in plan["trials"]] == [f"seed={s}" for s in choice["picked"]]


def test_summary_figures_from_a_study_folder_alone(tmp_path):
    # A hand-made folder: summarising needs only the files, never training or the storage.
    grid = {"halt_clustering_after": [1, 5, None], "pca_dim": [None, 32]}
    settings = [{"halt_clustering_after": h, "pca_dim": p} for h in grid["halt_clustering_after"] for p in grid["pca_dim"]]
    slug = lambda s: "__".join(f"{k}={'off' if v is None else v}" for k, v in s.items())
    trials = [{"slug": f"{slug(s)}__seed={seed}", "setting": slug(s), "params": {**s, "seed": seed}}
              for s in settings for seed in (0, 1, 2)]
    (tmp_path / "study.json").write_text(json.dumps({"name": "synthetic", "grid_keys": list(grid),
                                                     "fingerprint": {"grid": grid},
                                                     "metric": {"layer": "conv2", "protocol": "knn"}}))
    (tmp_path / "plan.json").write_text(json.dumps({"trials": trials, "dropped": [],
                                                    "settings": [{"slug": slug(s), "params": s} for s in settings]}))
    for i, t in enumerate(trials[:-1]):  # the last trial is still pending
        d = tmp_path / "trials" / t["slug"]
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({**t, "seed": t["params"]["seed"], "accuracy": 0.8 + i / 100,
                                                   "nmi": 0.5, "ia": 0.3 + (i % 5) / 50, "cycles": 8, "seconds": 10}))
    s = summarize_study(tmp_path)
    assert {"accuracy_vs_halt_clustering_after", "accuracy_vs_pca_dim", "halting_vs_accuracy", "ia_vs_accuracy",
            "median_ia_vs_accuracy"} <= set(s.files)
    assert all(p.stat().st_size > 1000 for p in s.files.values())
    assert [r["status"] for r in s.settings] == ["trained"] * 5 + ["pending"]
    assert s.settings[-1]["n"] == 2 and s.spearman is not None
    assert (tmp_path / "trials.csv").read_text().count("\n") == 1 + 17
