"""The per-format conformance suite (tests/io/conformance.py) for every registered adapter."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from geomed_seg.errors import OutputExistsError, UnsupportedFormatError, WriteError
from geomed_seg.inference.sinks import OutputSpec
from geomed_seg.io import faults
from geomed_seg.io.registry import adapters, open_image, sink_class, write_image
from tests.io.conformance import (
    ALSO_VOLUMES,
    CASES,
    allocated_while,
    check_independent,
    same_grid,
    volume,
)

ADAPTERS = {a.name: a for a in adapters()}
WRITABLE = sorted(n for n, a in ADAPTERS.items() if a.write is not None)
READ_ONLY = sorted(n for n, a in ADAPTERS.items() if a.write is None)
STREAMED = sorted(n for n, a in ADAPTERS.items() if a.sink is not None)


def _samples(name):
    case = CASES[name]
    return [case.sample()] + ([volume()] if name in ALSO_VOLUMES else [])


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_every_registered_adapter_has_a_case():
    missing = sorted(set(ADAPTERS) - set(CASES))
    assert not missing, f"adapters without a conformance case: {missing}"
    for name in WRITABLE:
        assert CASES[name].suffix in ADAPTERS[name].suffixes and CASES[name].lazy_sample


@pytest.mark.parametrize("name", WRITABLE)
def test_round_trip_data_and_grid(name, tmp_path):
    for k, image in enumerate(_samples(name)):
        path = write_image(image, tmp_path / f"out{k}{CASES[name].suffix}")
        back = open_image(path)
        assert back.kind == image.kind and back.dtype == image.dtype
        assert same_grid(back, image), (back.grid, image.grid)
        np.testing.assert_array_equal(back.compute(), image.compute())
        check_independent(name, path, image)


@pytest.mark.parametrize("name", READ_ONLY)
def test_read_only_format_matches_its_library(name, tmp_path):
    path, check = CASES[name].make(tmp_path)
    check(open_image(path))
    for suffix in ADAPTERS[name].suffixes:  # no writer: refused by name, nothing written
        with pytest.raises(UnsupportedFormatError, match="cannot write"):
            write_image(CASES["geotiff"].sample(), tmp_path / f"x{suffix}")
        assert not (tmp_path / f"x{suffix}").exists()


@pytest.mark.parametrize("name", STREAMED)
def test_streaming_sink_writes_blocks_to_the_same_image(name, tmp_path):
    for k, image in enumerate(_samples(name)):
        path = tmp_path / f"sink{k}{CASES[name].suffix}"
        data = image.compute()
        sink = sink_class(path)(path, overwrite=False)
        sink.start(OutputSpec(image.grid, data.shape[0], data.dtype, image.nodata))
        for chunk in np.array_split(np.arange(data.shape[1]), 3):  # three slabs on axis 1
            sl = (slice(int(chunk[0]), int(chunk[-1]) + 1),)
            sl += tuple(slice(0, n) for n in data.shape[2:])
            sink.write(data[(slice(None), *sl)], sl)
        out = sink.finish()
        assert same_grid(out, image)
        np.testing.assert_array_equal(out.compute(), data)
        check_independent(name, path, image)


@pytest.mark.parametrize("name", WRITABLE)
def test_nodata_is_kept_or_not_invented(name, tmp_path):
    for k, image in enumerate(_samples(name)):
        image = replace(image, nodata=0)  # the raster sample has nodata pixels in a corner
        back = open_image(write_image(image, tmp_path / f"nd{k}{CASES[name].suffix}"))
        if CASES[name].stores_nodata:
            assert back.nodata == 0
            invalid = (~back.valid_mask().compute()).sum()
            assert invalid == (image.compute() == 0).all(0).sum()
        else:  # the format has no nodata field: no value is made up
            assert back.nodata is None


@pytest.mark.parametrize("name", WRITABLE)
def test_overwrite_is_refused_and_leaves_the_file(name, tmp_path):
    image = CASES[name].sample()
    path = write_image(image, tmp_path / f"o{CASES[name].suffix}")
    before = _listing(tmp_path)
    stamp = _tree_bytes(path)
    with pytest.raises(OutputExistsError, match=str(path.name)):
        write_image(image, path)
    assert _tree_bytes(path) == stamp and _listing(tmp_path) == before
    write_image(image, path, overwrite=True)  # allowed when asked
    np.testing.assert_array_equal(open_image(path).compute(), image.compute())


def _tree_bytes(path):
    if path.is_file():
        return path.read_bytes()
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture
def disk_full(monkeypatch):
    """Make every commit fail as a full disk would (io/faults.py), for outputs named ``f*``."""
    monkeypatch.setenv(faults.ENV, "commit:f*:errno=ENOSPC")
    faults._rules.cache_clear()
    yield
    monkeypatch.delenv(faults.ENV)
    faults._rules.cache_clear()


@pytest.mark.parametrize("name", WRITABLE)
def test_failed_write_leaves_nothing_and_keeps_the_old_output(name, tmp_path, disk_full):
    image = CASES[name].sample()
    target = tmp_path / f"f{CASES[name].suffix}"
    with pytest.raises(WriteError, match="f"):
        write_image(image, target)
    assert _listing(tmp_path) == []  # no output, no temporary file, no sidecar
    os.environ.pop(faults.ENV)
    faults._rules.cache_clear()
    old = write_image(CASES[name].sample(), target)
    stamp, before = _tree_bytes(old), _listing(tmp_path)
    os.environ[faults.ENV] = "commit:f*:errno=ENOSPC"
    faults._rules.cache_clear()
    changed = image.with_data(image.darray + 1)
    with pytest.raises(WriteError):
        write_image(changed, target, overwrite=True)
    assert _tree_bytes(target) == stamp and _listing(tmp_path) == before


@pytest.mark.parametrize("name", WRITABLE)
def test_open_is_lazy(name, tmp_path):
    image = CASES[name].lazy_sample()
    path = write_image(image, tmp_path / f"lazy{CASES[name].suffix}")
    nbytes = image.darray.nbytes
    open_image(path, verify=False)  # imports and caches warm
    opened, at_open = allocated_while(lambda: open_image(path, verify=False))
    _, at_compute = allocated_while(lambda: opened.compute())
    assert at_compute >= nbytes  # tracemalloc sees the pixel buffers...
    assert at_open < nbytes / 8, f"opening {name} allocated {at_open} of {nbytes} bytes"


@pytest.mark.parametrize("name", READ_ONLY)
def test_read_only_open_is_lazy(name, tmp_path):
    path, check = CASES[name].make(tmp_path, big=True)
    check(open_image(path, verify=False))  # also warms imports and caches
    opened, at_open = allocated_while(lambda: open_image(path, verify=False))
    nbytes = opened.darray.nbytes
    _, at_compute = allocated_while(lambda: opened.compute())
    assert at_compute >= nbytes  # tracemalloc sees the pixel buffers...
    assert at_open < nbytes / 4, f"opening {name} allocated {at_open} of {nbytes} bytes"
