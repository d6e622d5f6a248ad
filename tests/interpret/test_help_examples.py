"""The examples of the ``--help`` epilogs of dissect, concepts, lce, ensemble, similarity, ia, study
and data run as written.

Every example parses against its command (options that exist, values of the right type) and its
preset names resolve; the slow test runs the digits chain of dissect, lce, ensemble and
similarity for real, in an empty folder, after the commands the epilogs say come first.
"""

from __future__ import annotations

import shlex

import pytest
import typer
from typer.testing import CliRunner

from deepcluster.cli import app, compare, data, ia, interpret, study
from deepcluster.core.config import resolve_config_file

EPILOGS = {
    "dissect": interpret.DISSECT_EPILOG,
    "lce": compare.LCE_EPILOG,
    "ensemble": compare.ENSEMBLE_EPILOG,
    "similarity": compare.SIMILARITY_EPILOG,
    "ia": ia.EPILOG,
    "study": study.EPILOG,
    "data ingest": data.INGEST_EPILOG,
}


def examples(epilog: str) -> list[list[str]]:
    """The command lines of an epilog: each paragraph that starts with ``deepcluster``, without
    its comment (after three spaces and a parenthesis)."""
    lines = []
    for chunk in epilog.split("\n\n"):
        chunk = chunk.strip()
        if chunk.startswith("deepcluster "):
            lines.append(shlex.split(chunk.split("   (")[0])[1:])
    return lines


def parse(args: list[str]):
    """``deepcluster ARGS`` parsed down to its command (a click context), nothing run."""
    cmd, name, args = typer.main.get_command(app), "deepcluster", list(args)
    while hasattr(cmd, "commands"):  # a group: descend into the sub-command
        assert args and args[0] in cmd.commands, (name, args)
        name, cmd, args = args[0], cmd.commands[args[0]], args[1:]
    return cmd.make_context(name, args)


def test_every_epilog_has_examples():
    for command, epilog in EPILOGS.items():
        lines = examples(epilog)
        assert any(" ".join(line[:len(command.split())]) == command for line in lines), (command, lines)


@pytest.mark.parametrize("command", sorted(EPILOGS))
def test_examples_parse_and_name_presets_that_exist(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from a folder outside the repository
    for line in examples(EPILOGS[command]):
        ctx = parse(line)
        config = ctx.params.get("config")
        if config is not None:
            assert resolve_config_file(config).is_file(), line
        for kv in ctx.params.get("set_") or []:
            assert "=" in kv, line
        if command == "study" and not str(ctx.params["spec"]).startswith("runs/"):
            assert resolve_config_file(ctx.params["spec"], "study").is_file(), line


def test_help_is_short_enough_to_read():
    runner = CliRunner()
    res = runner.invoke(app, ["dissect", "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0
    assert len(res.output.splitlines()) <= 110
    assert "conv5" not in res.output  # the old example asked for a layer the demo's LeNet lacks


@pytest.mark.slow
def test_digits_examples_run_as_written(tmp_path, monkeypatch):
    """The epilogs' own preambles, then every example of dissect, lce, ensemble and similarity."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEEPCLUSTER_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()

    def run(args: list[str]) -> None:
        res = runner.invoke(app, [*args, *(["-q"] if args[0] not in ("lce",) else [])])
        assert res.exit_code == 0, (args, res.output)

    run(["train", "-c", "digits_tiny", "-o", "runs/digits"])
    run(["train", "-c", "digits_tiny", "-o", "runs/digits_s1", "--set", "seed=1"])
    for line in examples(interpret.DISSECT_EPILOG):
        run(line)
    run(["dissect", "runs/digits_s1", "--layer", "conv2"])
    for command in ("lce", "ensemble", "similarity"):
        for line in examples(EPILOGS[command]):
            run(line)
