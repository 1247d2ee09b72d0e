"""Regenerate ``tests/data/brats_case/``: a small SYNTHETIC BraTS-like case (README commands).

Usage (from the repository root)::

    python tests/data/make_brats_case.py

The case is phantom seed 7 (the demo's) built by :func:`geomed_seg.synthetic.phantom.make_phantom`
on the bundled MNI152 T1 at 3 mm (zoom 3): synthetic tumour compartments and four synthetic
sequences (t1n, t1c, t2w, t2f) on real anatomy, cropped to the brain's bounding box (+1
voxel) and stored as int16 NIfTI with ``scl_slope`` 4 (intensities quantised to 4 units,
~0.1 % of the white-matter level) so that the folder stays about 0.5 MB; the truth is
``...-seg.nii.gz`` in the same folder (BraTS 2023 labels 1 NETC, 2 SNFH, 3 ET), as BraTS
lays out a case. qform and sform codes are 1 (scanner). NOT real MRI: see NOTICE.md.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
SEED, ZOOM, STEP = 7, 3, 4.0
PREFIX = f"BraTS-PHANTOM-{SEED:05d}-000"


def _save(arr_zyx: np.ndarray, affine: np.ndarray, path: Path, slope: float = 1.0) -> None:
    img = nib.Nifti1Image(arr_zyx.T, affine)  # our (z, y, x) -> NIfTI (i, j, k)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if slope != 1.0:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, path)


def main() -> None:
    from geomed_seg.io.registry import open_image
    from geomed_seg.synthetic.phantom import SEQUENCES, brain_mask, make_phantom

    t1 = open_image(HERE / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    ph = make_phantom(t1, SEED, zoom=ZOOM)
    mask = brain_mask(np.asarray(t1.darray[0].compute())[::ZOOM, ::ZOOM, ::ZOOM])
    rows = [np.nonzero(mask.any(axis=tuple(j for j in range(3) if j != i)))[0] for i in range(3)]
    box = tuple(slice(max(int(r.min()) - 1, 0), int(r.max()) + 2) for r in rows)
    image, labels = ph.image.sel_window(box), ph.labels.sel_window(box)
    affine = image.grid.affine
    out = HERE / "brats_case"
    out.mkdir(exist_ok=True)
    data = image.compute()
    for i, name in enumerate(SEQUENCES):
        stored = np.round(data[i] / STEP).astype(np.int16)
        _save(stored, affine, out / f"{PREFIX}-{name}.nii.gz", slope=STEP)
    _save(labels.compute()[0].astype(np.uint8), affine, out / f"{PREFIX}-seg.nii.gz")


if __name__ == "__main__":
    main()
