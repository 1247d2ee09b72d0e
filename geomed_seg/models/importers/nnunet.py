"""nnU-Net v2 results folders: recognised, but not imported yet.

A results folder (``plans.json``, ``dataset.json``, ``fold_*/checkpoint_final.pth``) needs,
to run with nnU-Net's answer: the ``dynamic_network_architectures`` network of the plans,
per-channel normalisation schemes (ZScore over the whole case or its non-zero mask, CT with
the fingerprint's foreground percentiles and moments), nnU-Net's cropping to the non-zero
box, its resampling to the target spacing and back, logits averaged over the allowed
mirroring axes and over folds, and region-based (sigmoid) outputs mapped back to labels.
Until those are translated and tested against ``nnUNetPredictor``, the importer refuses
the folder with this explanation instead of producing a model that answers differently.
"""

from __future__ import annotations

from pathlib import Path

from geomed_seg.errors import ModelError
from geomed_seg.models.importers.base import ImportedModel, ImportOptions


def run(src: Path, options: ImportOptions) -> ImportedModel:
    """Refuse: nnU-Net import is not available in this version (see module docstring)."""
    raise ModelError(
        f"{src}: an nnU-Net v2 results folder; importing nnU-Net models is not supported yet "
        "(its normalisation, cropping, resampling and mirroring must match nnUNetPredictor). "
        "Run it with nnU-Net, or export the network's state dict and import it with "
        "--format state-dict --arch ..."
    )
