"""Classical baselines on images of any size, keeping geometry.

``indices`` (NDWI, MNDWI, NDVI, NDBI), ``thresholds`` (scene-wide Otsu / multi-Otsu from a
streamed histogram, SAR dB water), ``local`` (Canny, marker watershed; tiled with a halo),
``clustering`` (k-means, SLIC), ``interactive`` (region growing, GrabCut, active contours on
a window around a world-coordinate seed), ``postprocess`` (morphology, holes, minimum size
in m²/mm³, components), ``tiling`` (halo execution helpers), ``registry`` (one entry per
method: run, options model, class table from the data catalog; ``builtin`` registers ours)
and ``api`` (``run_classical``, behind ``geomed-seg classical``).
"""
