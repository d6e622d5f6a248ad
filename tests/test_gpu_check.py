"""benchmarks/gpu_check.py keeps working without a GPU: its --cpu-smoke run passes with every
section in the table and every command's exit code 0; without CUDA the GPU check says so and exits 2;
past its time budget it skips the remaining steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ["environment", "k-means", "digits CLI", "alexnet cycle", "distributed"]
CLI_STEPS = {"train", "resume", "evaluate", "report", "ia", "export", "similarity", "dissect"}


def run_check(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_cpu_smoke_passes_with_every_section(tmp_path):
    res = run_check("--cpu-smoke", "--out", tmp_path)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["ok"] and data["verdict"] == "PASS" and data["mode"] == "cpu-smoke"
    rows = data["rows"]
    assert [r["section"] for r in rows] == sorted((r["section"] for r in rows), key=SECTIONS.index)
    assert {r["section"] for r in rows} == set(SECTIONS)
    assert all(r["status"] in ("ok", "n/a") for r in rows), [r for r in rows if r["status"] not in ("ok", "n/a")]

    # the printed table and the markdown table hold every section
    table = res.stdout[res.stdout.rindex("section "):]
    md = (tmp_path / "gpu_check.md").read_text()
    for section in SECTIONS:
        assert f"\n{section} " in table, section
        assert f"| {section} |" in md, section

    # every command ran through the CLI and exited 0: the digits commands, both AlexNet runs, torchrun
    commands = [r for r in rows if r["exit_code"] is not None]
    assert {r["check"] for r in commands if r["section"] == "digits CLI"} == CLI_STEPS
    assert {r["check"] for r in commands if r["section"] == "alexnet cycle"} == {"streamed", "in memory"}
    assert {r["check"] for r in commands if r["section"] == "distributed"} == {"2 ranks (torchrun, gloo)"}
    assert all(r["exit_code"] == 0 for r in commands), [r for r in commands if r["exit_code"]]

    values = {(r["section"], r["check"]): r["value"] for r in rows}
    assert "NMI" in values[("k-means", "torch (cpu) vs CPU kmeans, 3,000x32, k=20, 10 iters")]
    assert "assignments identical" in values[("distributed", "vs 1 process (the digits train step)")]
    assert "images: streamed" in values[("alexnet cycle", "streamed: phases")]
    assert "images: in memory" in values[("alexnet cycle", "in memory: phases")]
    assert (tmp_path / "logs" / "01_train.cmd").is_file()


def test_without_cuda_one_line_and_exit_2(tmp_path):
    res = run_check("--out", tmp_path, env={"CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--cpu-smoke" in lines[0], lines
    assert not (tmp_path / "gpu_check.json").exists()


def test_past_the_budget_every_step_is_skipped(tmp_path):
    res = run_check("--cpu-smoke", "--budget-s", 0, "--out", tmp_path, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not data["ok"] and {r["status"] for r in data["rows"]} == {"skipped: time"}
    assert {r["section"] for r in data["rows"]} == set(SECTIONS)
    assert not list((tmp_path / "logs").glob("*.cmd"))  # no command was started
