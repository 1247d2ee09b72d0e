"""EngineOptions: one frozen value, card defaults resolved in one place."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from geomed_seg.errors import InvalidInputError
from geomed_seg.inference.options import EngineOptions
from geomed_seg.models.card import ModelCard
from geomed_seg.pipelines.schema import EngineSpec
from tests.models.model_helpers import tiny_card


def test_resolve_fills_card_defaults_and_keeps_given_values():
    card = tiny_card(roi_size=[48, 40], overlap=0.4, mode="constant")
    opts = EngineOptions().resolve(card)
    assert (opts.roi_size, opts.overlap, opts.mode) == ((48, 40), 0.4, "constant")
    given = EngineOptions(roi_size=(32, 32), overlap=0.0, mode="gaussian").resolve(card)
    assert (given.roi_size, given.overlap, given.mode) == ((32, 32), 0.0, "gaussian")
    assert opts.resolved and not EngineOptions().resolved


def test_resolve_without_card_needs_roi_and_uses_engine_defaults():
    with pytest.raises(InvalidInputError, match="roi_size is required"):
        EngineOptions().resolve(None)
    opts = EngineOptions(roi_size=[16, 16]).resolve(None)
    assert (opts.roi_size, opts.overlap, opts.mode) == ((16, 16), 0.25, "gaussian")


def test_options_are_frozen_and_validated():
    opts = EngineOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.batch_size = 8  # type: ignore[misc]
    for bad, match in [
        (dict(overlap=1.0), "overlap"),
        (dict(mode="gausian"), "blend mode"),
        (dict(batch_size=0), "batch_size"),
        (dict(output="logits"), "output"),
        (dict(threshold=0.0), "threshold"),
        (dict(skip="sometimes"), "skip"),
        (dict(roi_size=("a", 2)), "roi_size"),
    ]:
        with pytest.raises(InvalidInputError, match=match):
            EngineOptions(**bad)
    with pytest.raises(TypeError, match="unknown engine option"):
        EngineOptions.of(None, roi=(1, 2))
    assert EngineOptions.of(opts, tta=True) == dataclasses.replace(opts, tta=True)


def test_pipeline_engine_spec_gives_the_same_options():
    spec = EngineSpec(roi_size=[64, 64], overlap=0.5, batch_size=2, device="cpu", tta=True)
    opts = spec.to_options(output="probabilities")
    assert opts == EngineOptions(roi_size=(64, 64), overlap=0.5, batch_size=2, device="cpu",
                                 tta=True, output="probabilities")  # fmt: skip
    assert EngineSpec().to_options().resolve(tiny_card()).roi_size == (64, 64)


def test_options_value_and_keywords_give_the_same_result():
    from geomed_seg.inference.segment import segment
    from geomed_seg.models.registry import build_model
    from tests.inference.conftest import raster

    img = raster(shape=(4, 40, 36))
    card = ModelCard(**{**tiny_card().model_dump(), "band_names": None})
    net = build_model(card.architecture, 4, 2, **card.architecture_kwargs).eval()

    from geomed_seg.models.checkpoint import LoadedModel

    loaded = LoadedModel(net, card, None, "cpu")
    kw = dict(roi_size=(32, 32), overlap=0.5, device="cpu", amp=False)
    a = segment(img, loaded, EngineOptions(**kw)).image.compute()
    b = segment(img, loaded, **kw).image.compute()
    np.testing.assert_array_equal(a, b)


def test_library_entry_points_import_neither_torch_nor_typer():
    """``segment_file`` and the option values live in the library: no typer (CLI) import,
    and torch only once a model runs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "import geomed_seg as gs\n"
        "gs.segment_file, gs.EngineOptions\n"
        "import geomed_seg.batch.options\n"
        "print(sorted(m for m in ('torch', 'typer') if m in sys.modules))"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
