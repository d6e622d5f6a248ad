"""`deepcluster report`: every section and figure present, self-contained, rendered by Chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deepcluster.cli import app
from deepcluster.report import ReportConfig, build_report
from deepcluster.report.html import Page

CONFIG = str(Path(__file__).parents[2] / "configs" / "digits_tiny.yaml")
SECTIONS = ["overview", "curves", "numbers", "maps", "neighbours", "filters", "top-images", "ascent", "clusters"]
runner = CliRunner()

SMALL = ["sample=300", "map_points=150", "ascent_steps=4", "ascent_channels=4", "units=4", "queries=3",
         "neighbors=4", "gallery_clusters=4", "per_cluster=5",
         # numbers: few epochs and repeats keep the suite to seconds on 1,500 digits
         ]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _train(out, *sets):
    args = ["train", "--config", CONFIG, "--set", "cycles=2", "--set", "threads=1", "--set", "epochs_per_cycle=1", "--set", "checkpoint_every=1"]
    for s in sets:
        args += ["--set", s]
    res = invoke(*args, "--out", out, "-q")
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    return _train(root / "plain"), _train(root / "sobel", "model.sobel=true")


@pytest.fixture(scope="module")
def report(two_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "rep"
    sets = []
    for s in SMALL:
        sets += ["--set", s]
    res = invoke("report", *two_runs, "--out", out, *sets, "--set", "numbers=false", "-q")
    assert res.exit_code == 0, res.output
    return out / "report.html"


def test_report_has_every_section_and_embeds_every_figure(report):
    html = report.read_text()
    for sec in SECTIONS:
        assert f'<section id="{sec}">' in html, sec
    figures = sorted(p.name for p in (report.parent / "figures").glob("*.png"))
    embedded = re.findall(r'data-file="figures/([^"]+)"', html)
    assert sorted(embedded) == figures
    # two runs × (random, trained) for filters, top-9 and ascent; one map / neighbours / gallery per run
    for stem in ("filters_plain_random", "filters_sobel_trained", "top9_plain_trained", "ascent_sobel_random",
                 "map_plain", "neighbours_sobel", "gallery_plain", "cluster_sizes_sobel", "training_curves",
                 "cycle_metrics"):
        assert f"{stem}.png" in figures, stem
    assert "http://" not in html and "https://" not in html and "<script" not in html  # nothing fetched
    assert (report.parent / "report_config.yaml").is_file()


def test_saved_report_config_remakes_the_report(report, two_runs, tmp_path):
    res = invoke("report", two_runs[0], "--config", report.parent / "report_config.yaml", "--out", tmp_path / "again",
                 "--set", "compare_random=false", "-q")
    assert res.exit_code == 0, res.output
    html = (tmp_path / "again" / "report.html").read_text()
    assert "filters_plain_trained.png" in html and "filters_plain_random.png" not in html


_CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const b = document.body.dataset;
  b.sections = [...document.querySelectorAll('section')].map(s => s.id).join(',');
  b.imagesTotal = imgs.length;
  b.imagesOk = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  b.tables = document.querySelectorAll('table').length;
  b.width = document.documentElement.scrollWidth;
});
</script></body>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.skip("headless Chromium not installed (Debian: apt-get install chromium; `make test` does it)")


def render(html_path: Path, tmp_path: Path) -> dict[str, str]:
    """Load the page in headless Chromium and read what the page's own DOM says after `load`."""
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", _CHECK))
    res = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom", probe.as_uri()],
        check=False, capture_output=True, text=True, timeout=120,
    )
    body = re.search(r"<body([^>]*)>", res.stdout)
    assert body, res.stderr[-2000:]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))


def test_report_renders_in_headless_chromium(report, tmp_path):
    seen = render(report, tmp_path)
    assert seen["sections"].split(",") == SECTIONS
    n_figs = len(list((report.parent / "figures").glob("*.png")))
    assert int(seen["images-total"]) == n_figs > 10
    assert int(seen["images-ok"]) == n_figs  # every embedded PNG decoded
    assert int(seen["tables"]) >= 1


def test_report_without_labels(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(60):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    run = _train(tmp_path / "run", "data.name=folder", f"data.root={folder}", "data.image_size=16",
                 "data.test_split=null", "model.arch=tiny_cnn", "k=4", "pca_dim=off", "batch_size=8")
    cfg = ReportConfig(sample=60, map_points=40, ascent_steps=3, units=3, ascent_channels=3, queries=2, neighbors=3,
                       gallery_clusters=3, per_cluster=3)
    path = build_report([run], tmp_path / "rep", cfg, show_progress=False)
    html = path.read_text()
    for sec in SECTIONS:
        assert f'<section id="{sec}">' in html
    assert "need labels; this dataset has none" in html  # the numbers section says why it is empty


def test_report_user_errors(tmp_path, two_runs):
    res = invoke("report", tmp_path / "nope", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    res = invoke("report", two_runs[0], "--set", "bogus=1", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "bogus" in res.output
    res = invoke("report", two_runs[0], "--checkpoint", "7", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "cycle_007.pt" in res.output


def test_page_escapes_text_and_embeds_png(tmp_path):
    png = tmp_path / "a.png"
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    Figure(figsize=(1, 1)).savefig(png)
    page = Page("t <1>")
    page.section("s", "S & T").figure(png, "cap <b>").table(["a"], [[0.5], [None]])
    out = page.render()
    assert "t &lt;1&gt;" in out and "S &amp; T" in out and "cap &lt;b&gt;" in out
    assert "data:image/png;base64," in out and "<td>0.5000</td>" in out and "<td>-</td>" in out
    json.dumps(out)  # plain text


def test_numbers_section_uses_the_suite_and_its_cache(tmp_path):
    run = _train(tmp_path / "run", "eval.probe_epochs=3", "eval.lowshot_repeats=2", "eval.lowshot_n=[1,5]",
                 "eval.layers=[conv2]", "eval.pixel_baseline=false")
    cfg = ReportConfig(sample=200, map_points=60, ascent_steps=2, units=2, ascent_channels=2, queries=2, neighbors=3,
                       gallery_clusters=2, per_cluster=3)
    first = build_report([run], tmp_path / "a", cfg, show_progress=False).read_text()
    sec = first[first.index('<section id="numbers">'):first.index('<section id="maps">')]
    assert "0 results read from the cache" in sec
    for proto in ("linear", "knn", "lowshot"):
        assert f'data-file="numbers/probe_{proto}.png"' in sec
    assert sec.count("<table>") == 3 and "random" in sec and "trained (last)" in sec
    assert (tmp_path / "a" / "numbers" / "probe_table.md").is_file()
    again = build_report([run], tmp_path / "b", cfg, show_progress=False).read_text()
    assert ", 0 computed" in again
