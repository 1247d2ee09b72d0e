"""cm.png: class names on both axes, counts equal to sklearn's confusion matrix, nothing clipped."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
from affine import Affine
from rasterio.crs import CRS
from sklearn.metrics import confusion_matrix

from geomed_seg.core.grid import GeoGrid
from geomed_seg.core.image import Image
from geomed_seg.metrics.evaluate import evaluate
from geomed_seg.metrics.report import confusion_figure, plot

NAMES = {0: "not water", 1: "open water under a very long description", 2: "urban fabric"}


def _result():
    rng = np.random.default_rng(3)
    ref = np.zeros((40, 50), np.uint8)
    ref[5:25, 10:35] = 1
    ref[28:36, 3:20] = 2
    pred = ref.copy()
    noise = rng.random(ref.shape) < 0.15
    pred[noise] = rng.integers(0, 3, int(noise.sum()))
    grid = GeoGrid(CRS.from_epsg(32633), Affine(10, 0, 5e5, 0, -10, 4e6), ref.shape)
    img = lambda a: Image.from_array(a[None], grid)  # noqa: E731
    classes = ",".join(f"{k}:{v}" for k, v in NAMES.items())
    return evaluate(img(pred), img(ref), classes=classes), pred, ref


def test_confusion_figure_names_classes_and_counts_match_sklearn():
    result, pred, ref = _result()
    fig = confusion_figure(result)
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == [f"{k} {v}" for k, v in NAMES.items()]
    assert [t.get_text() for t in ax.get_yticklabels()] == ticks
    cm = confusion_matrix(ref.ravel(), pred.ravel(), labels=[0, 1, 2])
    cells = [t.get_text() for t in ax.texts]
    for r in range(3):
        for c in range(3):
            assert f"{cm[r, c] / cm[r].sum():.2f}\n{cm[r, c]}" == cells[3 * r + c]
    assert "class names from --classes" in ax.get_title()


def test_saved_png_holds_every_label(tmp_path):
    result, _, _ = _result()
    path = tmp_path / "cm.png"
    plot(result, path)
    fig = confusion_figure(result)
    fig.set_dpi(100)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    tight = fig.get_tightbbox(renderer)  # inches: the union of every artist, labels included
    h, w = mpimg.imread(path).shape[:2]
    assert abs(w - (tight.width + 0.3) * 100) <= 3 and abs(h - (tight.height + 0.3) * 100) <= 3
