"""Make the inputs the README's commands use beyond tests/data (``make demo`` runs this).

Writes under ``OUT`` (default ``demo-output``):

- ``tiles/landsat_r{row}_c{col}.tif``: the bundled Landsat 7 scene cut into a 2 x 2 grid of
  GeoTIFF tiles (rasterio windows; each tile keeps the scene's CRS, its window's transform,
  band descriptions and compression), for ``geomed-seg batch --inputs 'demo-output/tiles/*.tif'``;
- ``models/unet_state_dict.pt``: a bare ``torch.save(model.state_dict())`` of a small
  MONAI ``UNet`` (4 channels in, 4 classes out, random weights, seed 0), for
  ``geomed-seg import-model --format state-dict``;
- ``models/sam_tiny/``: a tiny SAM with random weights saved by transformers'
  ``save_pretrained`` (hidden size 32, 64 px input), for ``geomed-seg sam``.

The models are UNTRAINED: they show how the commands work, their outputs mean nothing.
Nothing is downloaded. Existing files are left as they are (re-running is cheap).

Usage: ``python scripts/make_demo_inputs.py [OUT]``
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "tests" / "data" / "landsat7_olinda_L7_ETMs.tif"


def cut_tiles(scene: Path, folder: Path, rows: int = 2, cols: int = 2) -> list[Path]:
    """Cut ``scene`` into a ``rows`` x ``cols`` grid of GeoTIFFs (last row/column take the rest)."""
    import rasterio
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(scene) as src:
        h, w = src.height // rows, src.width // cols
        for r in range(rows):
            for c in range(cols):
                win = Window(c * w, r * h, src.width - c * w if c == cols - 1 else w,
                             src.height - r * h if r == rows - 1 else h)  # fmt: skip
                path = folder / f"{scene.stem.split('_')[0]}_r{r}_c{c}.tif"
                out.append(path)
                if path.exists():
                    continue
                profile = src.profile | {
                    "width": int(win.width), "height": int(win.height),
                    "transform": src.window_transform(win), "tiled": False,
                }  # fmt: skip
                profile.pop("blockxsize", None), profile.pop("blockysize", None)
                tmp = path.with_suffix(".part.tif")
                with rasterio.open(tmp, "w", **profile) as dst:
                    dst.write(src.read(window=win))
                    dst.descriptions = src.descriptions
                tmp.replace(path)
    return out


def state_dict(path: Path) -> Path:
    """Save a small random MONAI UNet's state dict (what a bare ``torch.save`` holds)."""
    if path.exists():
        return path
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=4, out_channels=4, channels=(8, 16, 32),
               strides=(2, 2), num_res_units=1)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)
    return path


def tiny_sam(folder: Path) -> Path:
    """Save a tiny random SAM checkpoint folder (transformers ``save_pretrained``)."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    cfg = SamConfig(
        vision_config=dict(
            hidden_size=32, output_channels=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=64, patch_size=8, window_size=4, global_attn_indexes=[0],
            num_pos_feats=16, mlp_dim=64,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8,
                                   mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2,
            iou_head_hidden_dim=32,
        ),
    )  # fmt: skip
    SamModel(cfg).save_pretrained(folder)
    processor = SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    SamProcessor(image_processor=processor).save_pretrained(folder)
    return folder


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path("demo-output")
    tiles = cut_tiles(SCENE, out / "tiles")
    made = [*tiles, state_dict(out / "models" / "unet_state_dict.pt")]
    made.append(tiny_sam(out / "models" / "sam_tiny"))
    for p in made:
        print(f"demo input: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
