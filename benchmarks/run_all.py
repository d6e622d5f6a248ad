"""Run every benchmark, each in its own process (a script's thread settings cannot leak into the
next); each prints its figures and ratios measured side by side in one run.

The figures the scripts record (``_results.record``) are written to
``benchmarks/results/<date>-<commit>.json`` and compared with the last committed results file:
each figure's change is printed, worse ones by more than 20 % flagged. Ratios against a baseline
timed in the same run (unit ``x``) are the figures to trust on a noisy machine; seconds move 2×
from run to run here. Commit the results of quiet runs.

``python benchmarks/run_all.py [bench_cycle bench_ia ...]`` runs only those; their figures are merged
into the results file of the same day and commit.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from deepcluster.core.precision import cpu_name

here = Path(__file__).resolve().parent
repo = here.parent
results_dir = here / "results"


def git(*args: str) -> str:
    res = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else ""


def last_committed() -> Path | None:
    """The newest results file git knows (by the date in its content, then its name)."""
    files = [repo / f for f in git("ls-files", "benchmarks/results/*.json").splitlines() if f]
    dated = []
    for f in files:
        try:
            dated.append((json.loads(f.read_text()).get("date", ""), f.name, f))
        except (OSError, ValueError):
            continue
    return max(dated)[2] if dated else None


def compare(now: dict, before_path: Path | None) -> None:
    if before_path is None:
        print("\nno committed results to compare with (commit this file after a quiet run)")
        return
    before = json.loads(before_path.read_text())
    print(f"\nchange against {before_path.relative_to(repo)} (commit {before.get('commit', '?')}):")
    old = before.get("figures", {})
    for name, fig in now["figures"].items():
        if name not in old:
            print(f"  {name:<48} {fig['value']:>10.3f} {fig['unit']:<3} (new)")
            continue
        a, b = old[name]["value"], fig["value"]
        change = (b - a) / abs(a) * 100 if a else float("inf")
        worse = change > 20 if fig["better"] == "lower" else change < -20
        flag = "  WORSE" if worse else ""
        print(f"  {name:<48} {a:>10.3f} -> {b:>10.3f} {fig['unit']:<3} {change:+6.1f} %{flag}")


def main(names: list[str]) -> int:
    scripts = sorted(here.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if s.stem in names or s.name in names]
    failed = []
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as figures:
        env = {**os.environ, "BENCH_RESULTS": figures.name}
        for script in scripts:
            print(f"\n=== {script.name} ===", flush=True)
            if subprocess.run([sys.executable, str(script)], env=env).returncode:
                failed.append(script.name)
        lines = [json.loads(line) for line in Path(figures.name).read_text().splitlines() if line.strip()]
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    now = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "scripts": [s.name for s in scripts],
        "failed": failed,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
        "figures": {line.pop("name"): line for line in lines},
    }
    before = last_committed()
    results_dir.mkdir(exist_ok=True)
    out = results_dir / f"{datetime.date.today().isoformat()}-{commit}.json"
    if names and out.exists():  # some scripts again: their figures replace theirs, the others stay
        kept = json.loads(out.read_text())
        now["scripts"] = sorted(set(kept.get("scripts", [])) | set(now["scripts"]))
        now["failed"] = sorted((set(kept.get("failed", [])) - {s.name for s in scripts}) | set(failed))
        now["figures"] = {**kept.get("figures", {}), **now["figures"]}
    out.write_text(json.dumps(now, indent=1) + "\n")
    print(f"\n{len(now['figures'])} figures -> {out.relative_to(repo)}")
    compare(now, before)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
