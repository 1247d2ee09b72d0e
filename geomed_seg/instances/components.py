"""Connected components over chunked images with ids consistent across chunk borders.

Hand-written because scikit-image/SciPy label only in-memory arrays (``dask-image`` would
add a dependency and gives no consecutive ids). The algorithm is the classic two-pass
block labelling:

1. every chunk is labelled on its own with ``skimage.measure.label`` (regions of equal
   non-background value), keeping only its label count and its border faces;
2. for every chunk border, pixels facing each other across it (with the chosen
   connectivity, diagonals included) and holding the same value give pairs of provisional
   ids; ``scipy.sparse.csgraph.connected_components`` (union-find) merges them;
3. a lookup table maps provisional ids to consecutive final ids ``1..n`` and the chunks are
   labelled again lazily and mapped through it.

The result equals ``skimage.measure.label`` on the whole image up to a permutation of ids.
"""

from __future__ import annotations

import itertools

import dask
import dask.array as da
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import label as sk_label

from geomed_seg.errors import InvalidInputError


def _local(block: np.ndarray, background: int, connectivity: int) -> np.ndarray:
    return sk_label(block, background=background, connectivity=connectivity).astype(np.uint64)


def _faces(block: np.ndarray, background: int, connectivity: int):
    lab = _local(block, background, connectivity)
    faces = [
        (lab.take(0, axis=a), lab.take(-1, axis=a), block.take(0, axis=a), block.take(-1, axis=a))
        for a in range(block.ndim)
    ]
    return int(lab.max()), faces


def _shifts(ndim: int, connectivity: int) -> list[tuple[int, ...]]:
    """In-plane offsets across a face allowed by skimage's ``connectivity`` (1..ndim)."""
    out = []
    for s in itertools.product((-1, 0, 1), repeat=ndim - 1):
        if 1 + sum(v != 0 for v in s) <= connectivity:
            out.append(s)
    return out


def _shifted(a: np.ndarray, b: np.ndarray, shift: tuple[int, ...]):
    """Return views ``a[p]`` and ``b[p + shift]`` over all valid positions ``p``."""
    sa, sb = [], []
    for s, n in zip(shift, a.shape, strict=True):
        sa.append(slice(max(-s, 0), n - max(s, 0)))
        sb.append(slice(max(s, 0), n - max(-s, 0)))
    return a[tuple(sa)], b[tuple(sb)]


def label_components(
    labels: da.Array | np.ndarray, *, background: int = 0, connectivity: int | None = None
) -> tuple[da.Array, int]:
    """Return ``(instance ids uint32, count)`` of connected regions of equal value.

    Parameters
    ----------
    labels : dask or numpy array, spatial only (``(y, x)`` or ``(z, y, x)``)
        Binary mask or class labels; regions of equal non-``background`` value are objects.
    connectivity : int or None
        scikit-image convention: 1 = faces only (4/6-neighbours) ... ``ndim`` = full
        (8/26-neighbours, the default).

    The ids are consecutive ``1..count`` (0 = background); the array is lazy (second pass).
    """
    arr = labels if isinstance(labels, da.Array) else da.from_array(np.asarray(labels))
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    ndim = arr.ndim
    conn = ndim if connectivity is None else int(connectivity)
    if not 1 <= conn <= ndim:
        raise InvalidInputError(f"connectivity must be 1..{ndim}, got {connectivity}")
    blocks = arr.to_delayed()
    flat_blocks = list(blocks.ravel())
    results = dask.compute(*[dask.delayed(_faces)(b, background, conn) for b in flat_blocks])
    counts = np.array([r[0] for r in results], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = int(counts.sum())
    nb = arr.numblocks
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for axis in range(ndim):
        for k in range(nb[axis] - 1):
            lo_ids, hi_ids, lo_val, hi_val = (
                _assemble_plane(arr, results, offsets, axis, k, which) for which in range(4)
            )
            for shift in _shifts(ndim, conn):
                a, b = _shifted(lo_ids, hi_ids, shift)
                va, vb = _shifted(lo_val, hi_val, shift)
                sel = (a > 0) & (b > 0) & (va == vb)
                pairs.append(np.stack([a[sel], b[sel]], axis=1).astype(np.int64))
    p = np.unique(np.concatenate(pairs), axis=0)
    graph = coo_matrix((np.ones(len(p)), (p[:, 0], p[:, 1])), shape=(total + 1, total + 1))
    _, comp = connected_components(graph, directed=False)
    # consecutive final ids in order of first provisional id
    _, first = np.unique(comp[1:], return_index=True)
    order = np.argsort(first)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    _, inv = np.unique(comp[1:], return_inverse=True)
    lut = np.concatenate([[0], rank[inv]]).astype(np.uint32)
    n = int(lut.max()) if total else 0
    if n >= 2**32 - 1:
        raise InvalidInputError(f"{n} objects do not fit uint32 ids")
    offs = offsets.reshape(nb)

    def _relabel(block: np.ndarray, block_info=None) -> np.ndarray:
        off = int(offs[tuple(block_info[0]["chunk-location"])])
        lab = _local(block, background, conn)
        return np.where(lab > 0, lut[(lab + off).astype(np.int64) * (lab > 0)], 0).astype(np.uint32)

    return arr.map_blocks(_relabel, dtype=np.uint32), n


def _assemble_plane(arr, results, offsets, axis: int, k: int, which: int) -> np.ndarray:
    """Full-size face plane at the border after chunk ``k`` along ``axis``.

    ``which``: 0 = global ids on the low side (last slice of chunk k), 1 = ids on the high
    side (first slice of chunk k+1), 2/3 = the input values on those sides.
    """
    nb = arr.numblocks
    other = [a for a in range(arr.ndim) if a != axis]
    plane = np.zeros([arr.shape[a] for a in other], dtype=np.int64)
    starts = [np.concatenate([[0], np.cumsum(arr.chunks[a])]) for a in other]
    idx_along = k if which in (0, 2) else k + 1
    for rest in itertools.product(*(range(nb[a]) for a in other)):
        loc = list(rest)
        loc.insert(axis, idx_along)
        lin = int(np.ravel_multi_index(tuple(loc), nb))
        faces = results[lin][1][axis]
        face = (
            faces[1]
            if which == 0
            else faces[0]
            if which == 1
            else faces[3]
            if which == 2
            else faces[2]
        )
        face = face.astype(np.int64)
        if which in (0, 1):
            face = np.where(face > 0, face + offsets[lin], 0)
        sl = tuple(slice(s[r], s[r + 1]) for s, r in zip(starts, rest, strict=True))
        plane[sl] = face
    return plane


def relabel_sequential(ids: da.Array) -> tuple[da.Array, int]:
    """Return ``(ids mapped to 1..n uint32, n)``, keeping 0; one streamed pass finds the ids."""
    uniq = np.asarray(da.unique(ids).compute())
    uniq = uniq[uniq != 0]

    def _map(block: np.ndarray) -> np.ndarray:
        out = np.searchsorted(uniq, block) + 1
        return np.where(block == 0, 0, out).astype(np.uint32)

    return ids.map_blocks(_map, dtype=np.uint32), int(len(uniq))
