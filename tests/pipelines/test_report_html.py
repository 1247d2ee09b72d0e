"""report.html: self-contained (embedded quicklook), links that resolve, the run's numbers,
provenance; rendered by headless Chromium when it is installed."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from geomed_seg.pipelines import run_pipeline

CHROMIUM = Path("/usr/bin/chromium")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.srcs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self.hrefs.append(a["href"])
        if tag in ("img", "script", "link"):
            self.srcs.append(a.get("src") or a.get("href"))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, landsat_path):
    out = tmp_path_factory.mktemp("html")
    sets = [f"input.path={landsat_path}", "model.method=ndwi_otsu", "outputs.polygons=false"]
    run = run_pipeline("flood", output=out, overrides=sets)
    return run, out


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_html_is_self_contained_and_every_link_resolves(run_folder, tmp_path):
    run, out = run_folder
    html_path = out / "report.html"
    assert run.outputs["report (HTML)"] == html_path
    # copied elsewhere alone with its folder: still complete
    copy = tmp_path / "copied"
    shutil.copytree(out, copy)
    page = _parse(copy / "report.html")
    assert page.srcs and all(s.startswith("data:image/png;base64,") for s in page.srcs)
    png = base64.b64decode(page.srcs[0].split(",", 1)[1])
    assert png == (out / "quicklook.png").read_bytes()
    targets = {(copy / h).resolve() for h in page.hrefs}
    assert all(not h.startswith("/") and "://" not in h for h in page.hrefs)
    assert all(t.is_file() for t in targets), [t for t in targets if not t.is_file()]
    expected = {"labels.tif", "quicklook.png", "report.json", "report.md", "run.json", "item.json"}
    assert expected <= {t.name for t in targets}


def test_report_html_shows_the_runs_numbers_and_provenance(run_folder, landsat_path):
    run, out = run_folder
    text = " ".join(_parse(out / "report.html").text)
    rep = json.loads((out / "report.json").read_text())
    for row in rep["classes"]:
        assert f"{row['area_km2']:.4f}" in text and row["name"] in text
    sha = hashlib.sha256(Path(landsat_path).read_bytes()).hexdigest()
    assert sha in text
    assert "rasterio" in text and "model card" in text


def test_chromium_renders_the_report(run_folder, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (make sysdeps installs it where apt works)")
    _, out = run_folder
    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", f"--screenshot={shot}", "--window-size=1200,2400",
           (out / "report.html").as_uri()]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[:2] == (2400, 1200)
    assert (img[..., :3].std(axis=(0, 1)) > 0.05).all()  # not a blank page: the quicklook shows
