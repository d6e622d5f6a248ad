"""``deepcluster lce``, ``deepcluster ensemble`` and ``deepcluster similarity``: compare models.

* ``lce``: Dissect profiles of several dissected models and their Learned Concepts Embedding.
* ``ensemble``: weighted soft-voting ensembles of every pair of runs' linear probes.
* ``similarity``: debiased linear CKA between the layers of several runs.

The commands are module-level functions; :func:`register` attaches them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from deepcluster.cli._common import DataRootOption, QuietOption, csv_option, err_console, out_console, user_errors

#: ``--weights`` and ``--weights-prefix`` of ``ensemble`` and ``similarity`` (the rules of ``dissect``'s).
WeightsOption = Annotated[list[str] | None, typer.Option(
    "--weights", metavar="FILE",
    help="A state dict or published checkpoint (MoCo, SwAV, DINO, DataParallel ... as dissect reads) whose backbone "
         "replaces the run's checkpoint in the run's architecture. Once per RUN, in order (- for none); "
         "the run is then named FOLDER+STEM.")]
WeightsPrefixOption = Annotated[list[str] | None, typer.Option(
    "--weights-prefix", metavar="PREFIX",
    help="The backbone's key prefix in --weights when its layout is not recognised (module.encoder.). Once for all, "
         "or once per RUN (- for none).")]


def _say(msg: str) -> None:
    """One plain line on stdout (no markup, no highlighting)."""
    out_console.print(msg, highlight=False, soft_wrap=True, markup=False)


def _num(v: float, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def run_lce(names: list[str], files: list[Path], out: Path, *, performance: Path | None = None,
            groups: int | None = None, components: int = 3, threshold: float = 0.04, method: str = "kmeans",
            raw: bool = False, seed: int = 0) -> None:
    """Dissect profiles of the tallies ``files`` (models ``names``), their LCE written to ``out``,
    and its tables printed: the body of ``deepcluster lce`` (and of ``dissect --lce``)."""
    import warnings

    from deepcluster.interpret.lce import DissectProfile, learned_concepts_embedding, profile_matrix, write_lce_outputs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # printed below
        profiles = profile_matrix([DissectProfile.from_tally(n, f, iou_threshold=threshold) for n, f in zip(names, files)],
                                  normalize="none" if raw else "superset")
    for w in profiles.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    res = learned_concepts_embedding(profiles, components, groups, seed, method=method, performance=performance)
    paths = write_lce_outputs(res, out)

    sizes = ", ".join(f"{profiles.category_sizes[c]} {c}" for c in profiles.categories)
    table = Table(title=f"Learned Concepts Embedding: {len(names)} models, {len(profiles.concepts)} concepts ({sizes})")
    table.add_column("model")
    table.add_column("group")
    for ax, r in zip(res.axes, res.explained_variance_ratio):
        table.add_column(f"{ax} ({100 * r:.0f}%)", justify="right")
    table.add_column("units", justify="right")
    table.add_column("labelled", justify="right")
    table.add_column("concepts", justify="right")
    for i, m in enumerate(profiles.models):
        table.add_row(escape(m), res.groups[i], *(f"{v:+.3f}" for v in res.coords[i]), str(profiles.n_units[m]),
                      str(int(profiles.counts[i].sum())), str(int((profiles.counts[i] > 0).sum())))
    out_console.print(table)

    corr = Table(title="Pearson correlation of each axis with the abstracted profile"
                 + (" and the performance table" if res.performance else ""),
                 caption="(Spearman and p-values in correlations.csv)", caption_justify="left")
    corr.add_column("variable")
    for ax in res.axes:
        corr.add_column(ax, justify="right")
    by_var: dict[str, dict[str, float]] = {}
    for r in res.correlations:
        by_var.setdefault(r["variable"], {})[r["axis"]] = r["pearson_r"]
    for var, vals in by_var.items():
        corr.add_row(escape(var), *(_num(vals.get(ax, float("nan")), 2) for ax in res.axes))
    out_console.print(corr)
    total = float(sum(res.explained_variance_ratio))
    how = f"{res.group_method}" + (f", silhouette {max(res.silhouettes.values()):.2f}" if res.silhouettes else "")
    _say(f"{len(res.axes)} components explain {100 * total:.1f}% of the variance; "
        f"{len(set(res.groups))} group(s) ({how})")
    _say(f"wrote {out}: " + ", ".join(paths))


@user_errors
def lce(
    tallies: Annotated[list[Path], typer.Argument(help="tally.csv files (NetDissect format), or folders holding one; one per model.")],
    name: Annotated[list[str] | None, typer.Option("--name", "-n", help="Model names, one per input, in order (default: the folder names).")] = None,
    performance: Annotated[Path | None, typer.Option("--performance", "-p", help="CSV of downstream results: a 'model' column and numeric columns, correlated with the LCE axes.")] = None,
    groups: Annotated[int | None, typer.Option("--groups", "-g", min=1, help="Number of model groups (default: chosen by silhouette).")] = None,
    components: Annotated[int, typer.Option("--components", min=1, help="PCA components kept.")] = 3,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, help="IoU a unit needs to count as labelled.")] = 0.04,
    method: Annotated[str, typer.Option(help="Grouping: kmeans or agglomerative.")] = "kmeans",
    layer: Annotated[str | None, typer.Option(help="When a folder holds one tally per layer: the layer to use.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Embed raw unit counts instead of counts / concepts per category.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the k-means grouping.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("lce"),
) -> None:
    """Learned Concepts Embedding: PCA of the models' Dissect profiles, groups, and what the axes mean.

    Writes profiles.csv, profile_counts.csv, abstracted_profile.csv, lce.csv, components.csv, correlations.csv, lce.json and PNG figures.
    """
    from deepcluster.core.errors import ConfigError
    from deepcluster.interpret.lce import default_model_names, find_tally

    if name and len(name) != len(tallies):
        raise ConfigError(f"{len(name)} --name for {len(tallies)} inputs: give one name per tally, in order")
    names = list(name) if name else default_model_names(tallies)
    files = [find_tally(t, layer=layer) for t in tallies]
    run_lce(names, files, out, performance=performance, groups=groups, components=components,
            threshold=threshold, method=method, raw=raw, seed=seed)


@user_errors
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Run folders trained on the same labelled dataset (at least 2).")],
    layer: Annotated[str | None, typer.Option(help="Probe layer of every run (default: each run's last conv layer).")] = None,
    lce: Annotated[Path | None, typer.Option("--lce", help="lce.csv from `deepcluster lce` (its model names = the run names): gains are averaged per group pair.")] = None,
    name: Annotated[list[str] | None, typer.Option("--name", "-n", help="Model names, one per run (default: the folder names; with --weights FILE: FOLDER+STEM).")] = None,
    checkpoint: Annotated[str, typer.Option(help="last, init or a cycle number with a kept checkpoint.")] = "last",
    train_limit: Annotated[int | None, typer.Option("--train-limit", min=2, help="Training images of each probe (default: the run's eval.train_limit).")] = None,
    test_limit: Annotated[int | None, typer.Option("--test-limit", min=2, help="Test images (default: the run's eval.test_limit).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default: the first run's setting).")] = None,
    weights: WeightsOption = None,
    weights_prefix: WeightsPrefixOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("ensemble"),
    data_root: DataRootOption = None,
    quiet: QuietOption = False,
) -> None:
    """Weighted soft-voting ensemble of every pair of runs' linear probes (weights 0.5 ± |a − b|).

    Writes ensemble.csv, ensemble.json, ensemble_gain.png, and with --lce ensemble_groups.csv/.png.
    """
    from deepcluster.interpret.ensemble import (
        ensembles_for_runs,
        write_ensemble_outputs,
    )
    from deepcluster.runs import data_root as runs_data_root

    with runs_data_root(data_root):
        res = ensembles_for_runs(runs, names=name, layer=layer, checkpoint=checkpoint, lce=lce,
                                 train_limit=train_limit, test_limit=test_limit, device=device,
                                 show_progress=not quiet, log=_say, weights=weights, weights_prefix=weights_prefix)
    paths = write_ensemble_outputs(res, out)
    table = Table(title=f"pairwise ensembles on {res.info['dataset']}, scored on the {res.info['scored']}",
                  caption="gain = ensemble − better single model (accuracy points)", caption_justify="left")
    for col in ("model a", "model b", "acc a", "acc b", "weights", "ensemble", "gain"):
        table.add_column(col, justify="left" if col.startswith("model") else "right")
    for r in sorted(res.rows, key=lambda r: -r["gain"]):
        table.add_row(escape(r["model_a"]), escape(r["model_b"]), _num(r["acc_a"], 4), _num(r["acc_b"], 4),
                      f"{r['weight_a']:.3f}/{r['weight_b']:.3f}", _num(r["ensemble_acc"], 4),
                      f"{100 * r['gain']:+.2f}")
    out_console.print(table)
    if res.group_rows:
        gt = Table(title="mean gain by LCE group pair (thesis Figure 3.8)")
        for col in ("groups", "pairs", "mean gain", "min", "max"):
            gt.add_column(col, justify="left" if col == "groups" else "right")
        for r in res.group_rows:
            gt.add_row(f"{r['group_a']}-{r['group_b']}", str(r["n_pairs"]), f"{100 * r['mean_gain']:+.2f}",
                       f"{100 * r['min_gain']:+.2f}", f"{100 * r['max_gain']:+.2f}")
        out_console.print(gt)
    _say(f"wrote {out}: " + ", ".join(paths))


@user_errors
def similarity(
    runs: Annotated[list[Path], typer.Argument(help="Run folders trained on the same dataset (at least 2).")],
    layers: Annotated[str | None, typer.Option("--layers", help="Comma-separated probe layers of every run (default: all).")] = None,
    sample: Annotated[int, typer.Option("--sample", min=4, help="Images of the test split the features are computed on.")] = 2000,
    name: Annotated[list[str] | None, typer.Option("--name", "-n", help="Model names, one per run (default: the folder names; with --weights FILE: FOLDER+STEM).")] = None,
    checkpoint: Annotated[str, typer.Option(help="last, init or a cycle number with a kept checkpoint.")] = "last",
    biased: Annotated[bool, typer.Option("--biased", help="The original CKA estimator instead of the debiased one.")] = False,
    pool_budget: Annotated[int | None, typer.Option("--pool-budget", min=1, help="Conv maps are average-pooled to at most this many dims (default: eval.pool_budget).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default: the first run's setting).")] = None,
    weights: WeightsOption = None,
    weights_prefix: WeightsPrefixOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("similarity"),
    data_root: DataRootOption = None,
    quiet: QuietOption = False,
) -> None:
    """Linear CKA (debiased) between every layer of several runs on the same images.

    Writes cka.csv (model_a, layer_a, model_b, layer_b, cka), cka.json, cka.png and one
    heatmap per pair of runs.
    """
    from deepcluster.interpret.cka import (
        similarity_for_runs,
        write_similarity_outputs,
    )
    from deepcluster.runs import data_root as runs_data_root

    with runs_data_root(data_root):
        res = similarity_for_runs(runs, names=name, layers=csv_option(layers), sample=sample, checkpoint=checkpoint,
                                  debiased=not biased, pool_budget=pool_budget, device=device,
                                  show_progress=not quiet, log=_say, weights=weights, weights_prefix=weights_prefix)
    paths = write_similarity_outputs(res, out)
    models = res.models
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            la, lb, sub = res.block(a, b)
            t = Table(title=f"{'debiased ' if res.debiased else ''}CKA: {escape(a)} (rows) vs {escape(b)} (columns)")
            t.add_column("")
            for lay in lb:
                t.add_column(escape(lay), justify="right")
            for lay, row in zip(la, sub):
                t.add_row(escape(lay), *(_num(float(v)) for v in row))
            out_console.print(t)
    _say(f"wrote {out}: " + ", ".join(paths))


#: Every example runs as written from an empty folder, in order (tests/interpret/test_help_examples.py):
#: two digits runs to compare.
_RUNS = "Examples (after deepcluster train -c digits_tiny -o runs/digits and the same with -o runs/digits_s1 --set seed=1):"
#: Not run (it needs a weights file): how --weights reads.
_WEIGHTS = ("A run's architecture with a published checkpoint's backbone instead of its own: --weights FILE once per RUN "
            "(- for none), e.g. `{command} runs/mine runs/mine --weights - --weights fair.pth` compares a run with "
            "the published weights (models mine and mine+fair). Layouts and --weights-prefix: docs/interpretation.md")
LCE_EPILOG = "\n\n".join([
    _RUNS[:-2] + ", deepcluster dissect runs/digits --layer conv2 and the same for runs/digits_s1):",
    "deepcluster lce runs/digits/dissect runs/digits_s1/dissect --layer conv2 -o lce   (models named digits, digits_s1)",
    "deepcluster lce runs/digits/dissect/conv2/tally.csv runs/digits_s1/dissect/conv2/tally.csv --name seed0 "
    "--name seed1 --groups 2 -o lce_named",
])
ENSEMBLE_EPILOG = "\n\n".join([
    _RUNS,
    "deepcluster ensemble runs/digits runs/digits_s1",
    "deepcluster ensemble runs/digits runs/digits_s1 --layer fc1 --lce lce/lce.csv -o ensemble_fc1   (lce.csv: see lce's "
    "examples)",
    _WEIGHTS.format(command="ensemble"),
])
SIMILARITY_EPILOG = "\n\n".join([
    _RUNS,
    "deepcluster similarity runs/digits runs/digits_s1",
    "deepcluster similarity runs/digits runs/digits_s1 --layers conv1,conv2 --checkpoint init --sample 200 -o sim_init",
    _WEIGHTS.format(command="similarity"),
])


def register(app: typer.Typer) -> None:
    """Add the ``lce``, ``ensemble`` and ``similarity`` commands to ``app``."""
    app.command("lce", epilog=LCE_EPILOG)(lce)
    app.command("ensemble", epilog=ENSEMBLE_EPILOG)(ensemble)
    app.command("similarity", epilog=SIMILARITY_EPILOG)(similarity)
