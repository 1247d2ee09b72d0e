"""The batch's report.html: totals from summary.json, a resolving link to every tile's page."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from geomed_seg.batch.runner import run_batch


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.append(dict(attrs)["href"])

    def handle_data(self, data):
        self.text.append(data)


def test_batch_report_links_every_tile_page_and_output(tiles, tmp_path, fast):
    out = tmp_path / "out"
    res = run_batch("flood", tiles, out, overrides=fast, processes=False)
    page = _Links()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    assert res.outputs["report_html"] == out / "report.html"
    targets = [(out / h).resolve() for h in page.hrefs]
    assert all(t.is_file() for t in targets), [t for t in targets if not t.is_file()]
    tile_pages = {t.parent.name for t in targets if t.name == "report.html"}
    assert tile_pages == {p.stem for p in tiles}
    assert {"summary.json", "summary.md", "mosaic.vrt"} <= {t.name for t in targets}
    text = " ".join(page.text)
    water = json.loads((out / "summary.json").read_text())["class_area_km2"]["water"]
    assert f"{water:.4f}" in text
