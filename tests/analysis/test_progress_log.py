"""Long analysis steps say what runs and how long is left, also where no progress bar shows (a log
file): ProgressLog, `deepcluster ia`'s grid, and a study's IA phase."""

import pytest

from deepcluster.analysis import progress_log
from deepcluster.analysis.progress_log import ProgressLog, duration
from deepcluster.analysis.study import run_study

from .study_helpers import write_spec


def test_duration_reads_as_seconds_minutes_or_hours():
    assert [duration(s) for s in (4.2, 89, 95, 5400)] == ["4 s", "89 s", "1.6 min", "1.5 h"]


def test_progress_log_throttles_and_estimates(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress_log.time, "perf_counter", lambda: now[0])
    lines = []
    ticker = ProgressLog(lines.append, "IA k=5", 10, unit="networks", every=10.0)
    now[0] = 105.0
    ticker.update(2)  # 5 s since the start: too soon
    now[0] = 120.0
    ticker.update(4)  # 20 s for 4: 30 s for the other 6
    now[0] = 125.0
    ticker.update(5)  # 5 s since the last line
    now[0] = 200.0
    ticker.update(10)  # the last one: the caller reports the result
    assert lines == ["IA k=5: 4/10 networks, 20 s, about 30 s left"]
    ProgressLog(None, "x", 3).update(1)  # no log: nothing, no error


def test_ia_grid_says_what_runs_and_the_time_left():
    from deepcluster.analysis.ia_grid import ia_grid
    from deepcluster.core.config import TrainConfig, build_config

    from .study_helpers import BASE

    lines = []
    base = build_config(TrainConfig, BASE, ["threads=1", "epochs_per_cycle=1", "data.limit=300", "k=5"])
    results = ia_grid(base, {"pca_dim": [4, 8]}, [0, 1], show_progress=False, log=lines.append)
    assert len(results) == 2
    assert lines[0] == ("Initial Alignment: 2 setting(s) × 2 random tiny_cnn networks on 300 images (k=5), each "
                        "clustered as cycle 1 of training would")
    assert lines[-1].startswith("1/2 settings in ") and lines[-1].endswith(" left")


@pytest.mark.slow
def test_study_ia_phase_logs_each_setting_and_the_time_left(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", ia={"seeds": 2, "trial": False})
    lines = []
    run_study(spec, tmp_path / "out", show_progress=True, max_trials=0, log=lines.append)
    ia = [x for x in lines if x.startswith("IA ")]
    assert ia[0].startswith("IA distributions (per setting): 2 settings × 2 random networks")
    assert ia[1].startswith("IA k=5: median ") and "over 2 networks" in ia[1] and ia[1].endswith(" left")
    assert ia[2].startswith("IA k=20: median ") and ia[2].endswith("2/2 settings")
    # planned again (a new storage): the distributions are read from the folder, and it says so
    lines.clear()
    (tmp_path / "out" / "study.db").unlink()
    run_study(spec, tmp_path / "out", show_progress=True, max_trials=0, log=lines.append)
    assert any(x.startswith("IA k=5: median ") and x.endswith("(from ia/k=5.json)") for x in lines), lines
    # --quiet: the phase's heading only
    lines.clear()
    (tmp_path / "out" / "study.db").unlink()
    run_study(spec, tmp_path / "out", show_progress=False, max_trials=0, log=lines.append)
    assert any(x.startswith("IA distributions") for x in lines)
    assert not any(x.startswith("IA k=") for x in lines)
