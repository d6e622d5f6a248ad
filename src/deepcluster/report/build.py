"""``deepcluster report``: one self-contained HTML page comparing runs, trained vs random.

Every picture is computed from the run folders alone (config, checkpoints, assignments,
metrics); numbers come from the evaluation suite's cache, so a second report is cheap.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from deepcluster import __version__
from deepcluster.core.config import config_to_dict
from deepcluster.core.errors import ConfigError
from deepcluster.core.files import write_text
from deepcluster.core.precision import run_precision
from deepcluster.features import FeatureOptions
from deepcluster.report.config import ReportConfig
from deepcluster.report.html import Page, Section

Log = Callable[[str], None]


@dataclass
class _Run:
    """What the pictures of one run need, loaded once."""

    name: str
    path: Path
    cfg: Any
    models: dict[str, torch.nn.Module]  # "random" / "trained"
    images: torch.Tensor  # the picture sample, uint8 N×C×H×W
    labels: np.ndarray | None
    classes: list[str] | None
    index: np.ndarray  # sample → position in the run's training set
    n_images: int  # the run's training images (the sample is ``len(index)`` of them)
    reader: FeatureOptions  # how the run's networks read the images (normalisation, device, precision)
    metrics: list[dict[str, Any]]
    assignments: dict[int, np.ndarray]  # cycle → full assignment
    features: dict[str, np.ndarray] | None = None  # clustering features of the sample, per model


def _load_run(path: Path, name: str, rcfg: ReportConfig, device: torch.device, show_progress: bool) -> _Run:
    from deepcluster.data.splits import load_split, normalization
    from deepcluster.runs import RunFolder

    run = RunFolder(path).require()
    cfg = run.load_config()
    models = {"trained": run.build_model(rcfg.checkpoint, cfg).to(device)}  # bad checkpoints fail first
    if rcfg.compare_random:
        models = {"random": run.build_model("init", cfg).to(device), **models}
    data = load_split(cfg)  # the images the run clustered, in the order of its assignments
    rng = np.random.default_rng(rcfg.seed)
    n = len(data)
    index = np.sort(rng.choice(n, size=min(rcfg.sample, n), replace=False))
    sub = data.subset(index)
    assignments = {c: run.load_assignments(c) for c in run.assignment_cycles()}
    for c, a in assignments.items():
        if len(a) != n:
            raise ConfigError(f"{run.assignments_path(c)} has {len(a)} entries but the run's data has {n} images: "
                              "the dataset changed since training; point data.root at the original images")
    return _Run(name=name, path=run.path, cfg=cfg, models=models, images=sub.images_tensor(),
                labels=None if data.labels is None else data.labels[index], classes=data.classes,
                index=index, n_images=n, metrics=run.metrics(), assignments=assignments,
                reader=FeatureOptions(*normalization(cfg, data.channels), device=device, show_progress=show_progress,
                                      precision=run_precision(cfg, device), batch_size=cfg.feature_batch_size))


def sample_statement(runs: list[_Run]) -> str:
    """How many images the pictures use, as they are: ``"all 1,500 training images"``, ``"a seeded
    sample of 5,000 of the 60,000 training images"``, per run when the runs differ."""
    def one(r: _Run) -> str:
        m = len(r.index)
        return (f"all {r.n_images:,} training images" if m == r.n_images
                else f"a seeded sample of {m:,} of the {r.n_images:,} training images")

    phrases = {r.name: one(r) for r in runs}
    if len(set(phrases.values())) == 1:
        return next(iter(phrases.values())) + (" of each run" if len(runs) > 1 else "")
    return "; ".join(f"{name}: {text}" for name, text in phrases.items())


def _label(model_name: str, rcfg: ReportConfig, run: _Run) -> str:
    if model_name == "random":  # the run's initial network: a published one for init: FILE
        return "imported init" if (run.path / "init_weights.json").is_file() else "random init"
    return f"trained ({rcfg.checkpoint})"


def _default_layer(model: torch.nn.Module) -> str:
    convs = [n for n in model.probe_layers() if n.startswith("conv")]
    return convs[-1] if convs else list(model.probe_layers())[-1]


def build_report(
    runs: list[str | Path],
    out: str | Path,
    rcfg: ReportConfig | None = None,
    *,
    device: str = "auto",
    show_progress: bool = True,
    log: Log | None = None,
) -> Path:
    """Write ``OUT/report.html`` (self-contained) and ``OUT/figures/*.png``; return the HTML path.

    Parameters
    ----------
    runs : list of path
        Run folders made by ``deepcluster train``; each is shown trained vs its random init.
    out : path
        Output folder; ``report_config.yaml`` is saved there too.
    rcfg : ReportConfig, optional
        What to draw; defaults to ``ReportConfig()``.
    """
    from deepcluster.core.device import resolve_device
    from deepcluster.evaluate.suite import run_names
    from deepcluster.runs import RunFolder

    rcfg = rcfg or ReportConfig()
    log = log or (lambda msg: None)
    if not runs:
        raise ConfigError("no run folder given: pass one or more --out folders of `deepcluster train`")
    out = Path(out)
    fig_dir = out / "figures"
    dev = resolve_device(device)
    paths = [Path(r) for r in runs]
    for p in paths:  # every run folder and checkpoint is checked before any images are read
        run = RunFolder(p).require()
        cfg = run.load_config()
        for which in (rcfg.checkpoint, "init") if rcfg.compare_random else (rcfg.checkpoint,):
            run.build_model(which, cfg)
    names = run_names(paths)  # the same names as the evaluation tables
    t0 = time.perf_counter()
    loaded = []
    for p, name in zip(paths, names):
        log(f"loading {p}")
        loaded.append(_load_run(p, name, rcfg, dev, show_progress))
    fig_dir.mkdir(parents=True, exist_ok=True)

    page = Page(
        title="DeepCluster report: " + ", ".join(names),
        subtitle=[f"deepcluster {__version__} · {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
                  "Runs: " + ", ".join(str(p) for p in paths),
                  f"Trained checkpoint: {rcfg.checkpoint}; pictures from {sample_statement(loaded)}."],
    )
    ctx = _Context(page=page, fig_dir=fig_dir, rcfg=rcfg, log=log, show_progress=show_progress, device=dev)
    steps: list[tuple[str, Callable[[_Context, list[_Run]], None]]] = [
        ("overview", _overview), ("training curves", _curves), ("numbers", _numbers),
        ("feature-space maps", _maps), ("nearest neighbours", _neighbours), ("first-layer filters", _filters),
        ("top activating images", _top_images), ("channel visualisations", _ascent), ("clusters", _clusters),
    ]
    for title, step in steps:
        ts = time.perf_counter()
        step(ctx, loaded)
        log(f"  {title:24s} {time.perf_counter() - ts:6.1f} s")
    page.subtitle.append(f"Made in {time.perf_counter() - t0:.0f} s with: deepcluster report "
                         + " ".join(str(p) for p in paths) + f" --out {out}")
    write_text(out / "report_config.yaml", "# remake with: deepcluster report " + " ".join(str(p) for p in paths)
               + f" --out {out} --config {out / 'report_config.yaml'}\n"
               + yaml.safe_dump(config_to_dict(rcfg), sort_keys=False))
    html_path = out / "report.html"
    write_text(html_path, page.render())
    return html_path


@dataclass
class _Context:
    page: Page
    fig_dir: Path
    rcfg: ReportConfig
    log: Log
    show_progress: bool
    device: torch.device

    def figure(self, sec: Section, path: Path, caption: str) -> None:
        sec.figure(path, caption, rel=f"figures/{path.name}")

    def png(self, stem: str) -> Path:
        return self.fig_dir / f"{_slug(stem)}.png"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# ---------------------------------------------------------------------------- sections


def _overview(ctx: _Context, runs: list[_Run]) -> None:
    sec = ctx.page.section("overview", "Overview", "What each run is, from its config.yaml and metrics.jsonl.")
    rows = []
    for r in runs:
        last = r.metrics[-1] if r.metrics else {}
        rows.append([r.name, r.cfg.data.name, r.cfg.model.arch, "yes" if r.cfg.model.sobel else "no",
                     r.cfg.clustering, r.cfg.k, f"{len(r.metrics)}/{r.cfg.cycles}",
                     len(r.assignments[max(r.assignments)]) if r.assignments else "-",
                     last.get("nmi_prev"), last.get("nmi_labels")])
    sec.table(["run", "dataset", "arch", "Sobel", "clustering", "k", "cycles done", "images",
               "NMI(t-1,t)", "NMI(labels)"], rows, caption="Last cycle's figures")


def _curves(ctx: _Context, runs: list[_Run]) -> None:
    from deepcluster.evaluate.cycles import cycle_metrics
    from deepcluster.report.curves import plot_cycle_metrics, plot_training_curves

    sec = ctx.page.section("curves", "Training curves",
                           "Loss and accuracy on the pseudo-labels, stability of the clusters between cycles "
                           "(NMI(t-1,t)), agreement with the labels when there are labels, and time per phase.")
    with_metrics = {r.name: r.metrics for r in runs if r.metrics}
    if not with_metrics:
        sec.note("No finished cycle yet: train the run first.")
        return
    ctx.figure(sec, plot_training_curves(with_metrics, ctx.png("training_curves")), "Per-cycle training metrics.")
    rows = {r.name: cycle_metrics(r.path) for r in runs if r.assignments}
    if rows:
        ctx.figure(sec, plot_cycle_metrics(rows, ctx.png("cycle_metrics")),
                   "Clustering metrics recomputed from the saved assignments (NMI, ARI, Hungarian accuracy vs labels).")


def _numbers(ctx: _Context, runs: list[_Run]) -> None:
    from deepcluster.core.errors import DataError
    from deepcluster.evaluate.suite import evaluate_and_write
    from deepcluster.evaluate.tables import pivot_tables

    rc = ctx.rcfg
    sec = ctx.page.section("numbers", "Linear probes, kNN and low-shot",
                           "Frozen features of each layer. Linear: the official eval_linear protocol (SGD logistic "
                           "regression fitted on labelled training images; accuracy at the last epoch, and apart, "
                           "as an optimistic figure, at the best epoch). kNN: weighted cosine vote. Low-shot: "
                           "logistic regression on n labelled images per class, mean ± std over draws. The numbers "
                           "are measured on the dataset's test split; a dataset without one (an image folder, an "
                           "ingested pool) is scored on a seeded held-out part of its training images (eval.holdout), "
                           "which the probes never see, though the network itself was trained on them (without "
                           "their labels). Each table says which images it scored. Every number is cached per run, "
                           "checkpoint, layer and protocol in RUN/eval/cache.")
    if not rc.numbers:
        sec.note("Skipped (numbers=false): `deepcluster evaluate RUN` computes them.")
        return
    labelled = [r for r in runs if r.labels is not None]
    for r in runs:
        if r not in labelled:
            sec.note(f"{r.name}: probes, kNN and low-shot need labels; this dataset has none.")
    if not labelled:
        return
    checkpoints = (["init"] if rc.compare_random else []) + [rc.checkpoint]
    try:
        res = evaluate_and_write([r.path for r in labelled], ctx.fig_dir.parent / "numbers", checkpoints=checkpoints,
                                 protocols=rc.protocols, show_progress=ctx.show_progress, log=ctx.log)
    except DataError as e:
        sec.note(f"not evaluated: {e}")
        return
    counts = res.counts()
    sec.text(f"{counts['cache']} results read from the cache, {counts['computed']} computed; "
             "tables also in numbers/probe_table.md and .csv.")
    for table in pivot_tables(res.rows):
        sec.heading(table.title)
        sec.text(table.scored)
        sec.table(table.header, table.rows)
        chart = res.paths.get(f"chart_{table.protocol}")
        if chart is not None:
            sec.figure(chart, "", rel=f"numbers/{chart.name}")


def _features(ctx: _Context, r: _Run) -> dict[str, np.ndarray]:
    """Clustering features (what DeepCluster clusters) of the picture sample, per model; cached."""
    if r.features is None:
        from deepcluster.features import extract_features

        r.features = {m: extract_features(model, r.images, r.reader, description=f"{r.name} {m}: features")["embed"]
                      for m, model in r.models.items()}
    return r.features


def _maps(ctx: _Context, runs: list[_Run]) -> None:
    from deepcluster.core.progress import progress_bar
    from deepcluster.report.feature_map import embed_2d, plot_feature_maps

    rc = ctx.rcfg
    points = {r.name: min(rc.map_points, len(r.images)) for r in runs}
    shown = (f"{next(iter(points.values())):,}" if len(set(points.values())) == 1
             else ", ".join(f"{n:,} ({name})" for name, n in points.items()))
    sec = ctx.page.section("maps", "Feature-space maps",
                           f"{rc.map_method.upper()} of the clustering features of {shown} sampled images, "
                           "coloured by label when there are labels (Deep Dive Figure 2).")
    features = {r.name: _features(ctx, r) for r in runs}  # before the maps' bar: one progress display at a time
    maps = sum(len(f) for f in features.values())
    method = "t-SNE" if rc.map_method == "tsne" else "UMAP"
    ctx.log(f"  {maps} {method} maps of up to {max(points.values()):,} points: usually 5-40 s each on a CPU "
            "(--set map_points=1000 for less)")
    done, t0 = 0, time.perf_counter()
    with progress_bar(f"{method} maps", total=maps, enabled=ctx.show_progress) as advance:
        for r in runs:
            panels = {}
            for m, f in features[r.name].items():
                ts = time.perf_counter()
                xy, idx = embed_2d(f, method=rc.map_method, seed=rc.seed, max_points=rc.map_points)
                panels[_label(m, rc, r)] = xy
                done += 1
                advance(1)
                left = maps - done
                ctx.log(f"    {method} map {done}/{maps} ({r.name}, {_label(m, rc, r)}, {len(xy):,} points): "
                        f"{time.perf_counter() - ts:.1f} s"
                        + (f"; the other {left} about {(time.perf_counter() - t0) / done * left:.0f} s" if left else ""))
            labels = None if r.labels is None else r.labels[idx]
            path = plot_feature_maps(panels, labels, ctx.png(f"map_{r.name}"), class_names=r.classes, title=r.name)
            ctx.figure(sec, path, f"{r.name}.")


def _neighbours(ctx: _Context, runs: list[_Run]) -> None:
    from deepcluster.report.neighbors import nearest_neighbors, plot_neighbor_queries

    rc = ctx.rcfg
    sec = ctx.page.section("neighbours", "Nearest-neighbour queries",
                           f"Each query image and its {rc.neighbors} nearest neighbours (cosine, clustering features) "
                           "among the sampled images; green/red frames: same/different label (Caron Figure 5.3).")
    for r in runs:
        feats = _features(ctx, r)
        queries = np.random.default_rng(rc.seed + 1).choice(len(r.images), size=min(rc.queries, len(r.images)),
                                                            replace=False)
        nbrs = {_label(m, rc, r): nearest_neighbors(f, queries, k=rc.neighbors) for m, f in feats.items()}
        path = plot_neighbor_queries(r.images, queries, nbrs, ctx.png(f"neighbours_{r.name}"), labels=r.labels)
        ctx.figure(sec, path, f"{r.name}.")


def _filters(ctx: _Context, runs: list[_Run]) -> None:
    from deepcluster.report.filters import first_layer_filters, plot_filters

    sec = ctx.page.section("filters", "First-layer filters",
                           "Weights of the first convolution; with a Sobel front they are composed with the "
                           "fixed grey + Sobel filters, so they are shown as filters on the input image "
                           "(Caron Figure 5.2).")
    for r in runs:
        for m, model in r.models.items():
            title = f"{r.name}: {_label(m, ctx.rcfg, r)}"
            path = plot_filters(first_layer_filters(model), ctx.png(f"filters_{r.name}_{m}"), title=title)
            ctx.figure(sec, path, title + ".")


def _top_images(ctx: _Context, runs: list[_Run]) -> None:
    from deepcluster.report.activations import plot_top_activations, top_activating

    rc = ctx.rcfg
    sec = ctx.page.section("top-images", "Top activating images",
                           f"For {rc.units} units of one layer, the 9 sampled images with the highest (spatially "
                           "maximal) activation (Caron Figure 5.4).")
    for r in runs:
        for m, model in r.models.items():
            layer = rc.activation_layer or _default_layer(model)
            idx, vals = top_activating(model, r.images, *r.reader.stats, layer, units=list(range(min(rc.units, _layer_width(model, layer)))),
                                       n=9, show_progress=ctx.show_progress, precision=r.reader.precision)
            title = f"{r.name}: {_label(m, rc, r)}, layer {layer}"
            path = plot_top_activations(r.images, idx, ctx.png(f"top9_{r.name}_{m}"), values=vals, title=title)
            ctx.figure(sec, path, title + ".")


def _layer_width(model: torch.nn.Module, layer: str) -> int:
    """Channels (conv) or units (linear) of a probe layer, read from the layer before it."""
    names = list(model.probe_layers())
    path = model.probe_path(layer)
    width = None
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) and name != "top_layer":
            width = mod.out_channels if isinstance(mod, torch.nn.Conv2d) else mod.out_features
        if name == path:
            break
    if width is None:
        raise ConfigError(f"cannot find the width of layer {layer}; probe layers are {names}")
    return int(width)


def _ascent(ctx: _Context, runs: list[_Run]) -> None:
    from deepcluster.report.gradient_ascent import (
        plot_channel_visualizations,
        visualize_channels,
    )

    rc = ctx.rcfg
    sec = ctx.page.section("ascent", "Channel visualisations (gradient ascent)",
                           f"Input images that maximise the mean activation of {rc.ascent_channels} channels, by "
                           f"{rc.ascent_steps} steps of gradient ascent with L2 decay and periodic blur "
                           "(Caron thesis ch. 5).")
    for r in runs:
        for m, model in r.models.items():
            layer = rc.activation_layer or _default_layer(model)
            channels = list(range(min(rc.ascent_channels, _layer_width(model, layer))))
            imgs = visualize_channels(model, layer, channels, input_shape=tuple(r.images.shape[1:]), mean=r.reader.mean,
                                      std=r.reader.std, steps=rc.ascent_steps, seed=rc.seed,
                                      show_progress=ctx.show_progress)
            title = f"{r.name}: {_label(m, rc, r)}, layer {layer}"
            path = plot_channel_visualizations(imgs, ctx.png(f"ascent_{r.name}_{m}"), channels=channels, title=title)
            ctx.figure(sec, path, title + ".")


def _clusters(ctx: _Context, runs: list[_Run]) -> None:
    from deepcluster.report.clusters import plot_cluster_gallery, plot_cluster_sizes

    rc = ctx.rcfg
    sec = ctx.page.section("clusters", "Clusters",
                           "The last cycle's clusters: sampled images per cluster with the share of its majority "
                           "label (purity, over the sampled images), and the cluster sizes of the first and last "
                           "cycles over all images.")
    for r in runs:
        if not r.assignments:
            sec.note(f"{r.name}: no saved assignments yet.")
            continue
        first, last = min(r.assignments), max(r.assignments)
        shown = np.asarray(r.assignments[last])[r.index]
        keep = shown >= 0  # an Algorithm 2 cycle (pool_subset) clustered a sample: -1 outside it
        path = plot_cluster_gallery(r.images[torch.as_tensor(np.flatnonzero(keep))], shown[keep],
                                    ctx.png(f"gallery_{r.name}"),
                                    labels=None if r.labels is None else np.asarray(r.labels)[keep],
                                    n_clusters=rc.gallery_clusters, per_cluster=rc.per_cluster,
                                    seed=rc.seed, class_names=r.classes)
        ctx.figure(sec, path, f"{r.name}: cycle {last}, largest clusters first.")
        sizes = {f"cycle {c}": r.assignments[c][r.assignments[c] >= 0] for c in dict.fromkeys([first, last])}
        path = plot_cluster_sizes(sizes, ctx.png(f"cluster_sizes_{r.name}"), k=r.cfg.k)
        ctx.figure(sec, path, f"{r.name}: cluster sizes.")
