"""report.html in a real browser: headless Chromium opens it from disk, and the test checks that the comparison table
and the embedded curve images render (DOM rows, images decoded with a natural width, a non-blank screenshot).

Skipped, with the reason, when no Chromium is installed (Debian: `apt-get install -y chromium`; CI installs it).
Set MEDR1_SCREENSHOT_DIR to keep the screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from medr1.report import build_report
from test_report import make_synthetic_run

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next((p for p in (shutil.which(n) for n in CHROMIUM_NAMES) if p), None)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)")

# Runs after load in an instrumented copy of the report: writes what rendered into a DOM attribute for --dump-dom.
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var rows = document.querySelectorAll('#comparison tbody tr').length;
  var marker = document.createElement('div');
  marker.id = 'render-check';
  marker.setAttribute('data-result', 'images=' + ok + '/' + imgs.length + ';rows=' + rows);
  document.body.appendChild(marker);
});
</script>"""


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    run_dir = make_synthetic_run(tmp_path_factory.mktemp("browser") / "run")
    return build_report(run_dir)["html"]


def test_table_rows_and_images_render_in_chromium(report_html: Path, tmp_path: Path) -> None:
    check = report_html.with_name("report-check.html")
    check.write_text(report_html.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"),
                     encoding="utf-8")
    result = chromium(["--virtual-time-budget=10000", "--dump-dom", check.as_uri()], tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    found = re.search(r'id="render-check" data-result="images=(\d+)/(\d+);rows=(\d+)"', dom)
    assert found, dom[-2000:]
    ok, total, rows = map(int, found.groups())
    assert total == 2 and ok == total, "curve images did not decode"
    assert rows == 8
    for label in ("baseline cot", "SFT+RAG", "GRPO+RAG", "bm25-ranker"):
        assert f"<th>{label}</th>" in dom
    assert "55.0% [48.1–61.7]" in dom


def test_screenshot_is_not_blank(report_html: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    result = chromium([f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars",
                       report_html.as_uri()], tmp_path / "profile")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = imread(str(shot))
    assert pixels.shape[0] == 2000 and pixels.shape[1] == 1280
    # text, table borders and the plotted curves: many distinct colours, not a blank page
    assert pixels[..., :3].std() > 0.05
    assert len({tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}) > 50
    keep = os.environ.get("MEDR1_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report-synthetic.png")


def test_markup_in_a_completion_renders_as_text(tmp_path: Path) -> None:
    """A model can write anything: a `<script>` in a completion or an `<img onerror>` in a question must show as
    text in report.html and never run."""
    import json

    from test_report import HPO

    run_dir = make_synthetic_run(tmp_path / "run")
    path = run_dir / "eval-grpo" / "self-ask" / HPO / "samples.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    evil = "<script>document.body.setAttribute('data-pwned', 'script')</script>"
    for r in records:
        if r.get("completion"):
            r["completion"] = r["completion"].replace("<think>", "<think>" + evil, 1)
            r["question"] += " <img src=x onerror=\"document.body.setAttribute('data-pwned', 'img')\">"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    html = build_report(run_dir)["html"]
    result = chromium(["--virtual-time-budget=5000", "--dump-dom", html.as_uri()], tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "data-pwned" in html.read_text(encoding="utf-8")  # the exemplar with the markup is in the report
    assert not re.search(r"<body[^>]*data-pwned", dom), "markup from a completion ran in the report"
    assert "&lt;script&gt;document.body.setAttribute" in dom  # shown as text
