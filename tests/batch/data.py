"""Test data for the batch tests: tiles cut from the bundled Landsat scene with rasterio."""

from __future__ import annotations

from pathlib import Path

import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

#: Fast pipeline outputs for tests (labels + report + provenance only).
FAST = ("outputs.polygons=false", "outputs.quicklook=false")


def cut_tiles(scene: Path, folder: Path, rows: int = 2, cols: int = 3) -> list[Path]:
    """Cut ``scene`` into rows x cols GeoTIFF tiles keeping their geometry; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(scene) as ds:
        h, w = ds.height // rows, ds.width // cols
        for r in range(rows):
            for c in range(cols):
                win = Window(c * w, r * h, w, h)
                prof = ds.profile.copy()
                prof.update(width=w, height=h, transform=window_transform(win, ds.transform))
                for key in ("blockxsize", "blockysize", "tiled"):
                    prof.pop(key, None)
                path = folder / f"tile_{r}_{c}.tif"
                with rasterio.open(path, "w", **prof) as dst:
                    dst.write(ds.read(window=win))
                out.append(path)
    return out
