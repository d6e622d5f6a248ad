"""A study on a real PostgreSQL server: two workers, one killed with kill -9, every trial once.

The server is started here, on 127.0.0.1 in a temporary folder, from Debian's ``postgresql``
binaries (``make test`` installs the package when it is missing and it runs as root). Without
them, or without ``psycopg2`` (``pip install deepcluster[postgres]``), the test is skipped and
says why.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from .study_helpers import OVERRIDES, complete_by_slug, mid_training, train_starts, worker, write_spec

pytestmark = pytest.mark.slow


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed: pip install 'deepcluster[postgres]'")
    bindir = _binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb): apt-get install postgresql, or run `make test` as root")
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:  # the server refuses to run as root: run it as Debian's postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="deepcluster-pg-"))
    data = root / "data"
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    port = _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
            f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off -c max_connections=50", "start")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as e:
        log = (root / "server.log").read_text()[-2000:] if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL from {bindir}: {e}\n{log}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgresql_one_killed_every_trial_once(tmp_path, postgres_url):
    seeds = [0, 1, 2]
    spec = write_spec(tmp_path / "spec.yaml", name="pg_tiny", seeds=seeds, ia={"trial": False},
                      overrides={**OVERRIDES, "cycles": 6})
    out = tmp_path / "out"
    victim, survivor = worker(spec, out, "--storage", postgres_url), worker(spec, out, "--storage", postgres_url)
    # kill -9 the first worker while one of its trials is half-way through its cycles
    deadline = time.time() + 180
    killed_trial = None
    while time.time() < deadline and killed_trial is None:
        assert victim.poll() is None, victim.stdout.read()
        for trial in mid_training(out):
            events = [json.loads(x) for x in (trial / "study_log.jsonl").read_text().splitlines() if x.strip()]
            if any(e.get("pid") == victim.pid for e in events):
                killed_trial = trial.name
        time.sleep(0.05)
    assert killed_trial is not None, "the first worker never got a trial half-way"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert survivor.wait(300) == 0, survivor.stdout.read()

    # the workers were given postgresql:// (they pick the installed driver); optuna here is told it
    study = optuna.load_study(study_name="pg_tiny", storage=postgres_url.replace("postgresql://", "postgresql+psycopg2://"))
    planned = [t["slug"] for t in json.loads((out / "plan.json").read_text())["trials"]]
    assert len(planned) == 2 * len(seeds)
    assert complete_by_slug(study) == {slug: 1 for slug in planned}  # every trial completed exactly once
    for slug in planned:
        assert (out / "trials" / slug / "result.json").is_file()
        assert train_starts(out / "trials" / slug) == (2 if slug == killed_trial else 1)
    assert [t.state for t in study.get_trials()].count(TrialState.FAIL) == 1  # the dead worker's, retried once
