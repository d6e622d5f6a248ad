"""make bench keeps its figures: benchmarks/_results.record and run_all's comparison with the last
committed results file (the benchmarks themselves are not run here)."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_record_appends_figures_only_when_collecting(tmp_path, monkeypatch):
    results = _load("_results")
    monkeypatch.delenv("BENCH_RESULTS", raising=False)
    results.record("x.s", 1.0, "s")  # run alone: nothing to write, no error
    path = tmp_path / "figures.jsonl"
    monkeypatch.setenv("BENCH_RESULTS", str(path))
    monkeypatch.setattr(sys, "argv", ["bench_cycle.py"])
    results.record("cycle.training.plain_over_product", 1.07, "x", better="higher", note="goal >= 1.0")
    results.record("cycle.training.product_s", 4.2, "s")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["cycle.training.plain_over_product", "cycle.training.product_s"]
    assert lines[0] == {"name": "cycle.training.plain_over_product", "value": 1.07, "unit": "x", "better": "higher",
                        "script": "bench_cycle.py", "note": "goal >= 1.0"}


def test_compare_flags_what_got_worse(tmp_path, capsys, monkeypatch):
    run_all = _load("run_all")
    monkeypatch.setattr(run_all, "repo", tmp_path)
    before = tmp_path / "before.json"
    before.write_text(json.dumps({"commit": "abc", "figures": {
        "a.s": {"value": 10.0, "unit": "s", "better": "lower"},
        "b.ratio": {"value": 1.2, "unit": "x", "better": "higher"},
        "c.s": {"value": 10.0, "unit": "s", "better": "lower"}}}))
    now = {"figures": {"a.s": {"value": 13.0, "unit": "s", "better": "lower"},
                       "b.ratio": {"value": 0.8, "unit": "x", "better": "higher"},
                       "c.s": {"value": 8.0, "unit": "s", "better": "lower"},
                       "d.new": {"value": 1.0, "unit": "x", "better": "higher"}}}
    run_all.compare(now, before)
    out = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert "WORSE" in out["a.s"] and "+30.0 %" in out["a.s"]
    assert "WORSE" in out["b.ratio"]
    assert "WORSE" not in out["c.s"] and "-20.0 %" in out["c.s"]
    assert "(new)" in out["d.new"]
