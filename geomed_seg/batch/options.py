"""Batch options: how a batch runs (retries, blocks, mosaic, thresholds) and where (cluster).

Two frozen values, built by the ``batch`` command and by library callers, consumed by
:func:`geomed_seg.batch.runner.run_batch`. The engine settings of a batch are not here:
they are the pipeline's ``engine:`` section (``EngineSpec.to_options()``), edited with
``overrides`` like any other config key, so they are part of the config hash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from geomed_seg.errors import InvalidInputError

#: ``"batch"``: one threshold from all tiles (pass 1); ``"tile"``: each task its own.
THRESHOLD_SCOPES = ("batch", "tile")


@dataclass(frozen=True)
class ClusterOptions:
    """Where the tasks run (see :func:`geomed_seg.batch.cluster.open_client`).

    Attributes
    ----------
    workers, threads, memory_limit, processes :
        The cluster started when no ``scheduler`` is given: ``None`` sizes a
        ``LocalCluster`` to the machine, or takes the ``jobqueue.yaml`` values;
        ``memory_limit`` per worker, e.g. ``"2GB"``; with ``jobqueue`` ``workers`` is the
        number of jobs.
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:port``) to use instead.
    jobqueue : {"slurm", "pbs"}, optional
        Start the workers as batch jobs through dask-jobqueue.
    devices : tuple of str, optional
        Local cluster only: one worker process per device (``("cuda:0", "cuda:1")``, or
        ``("all",)`` for every visible GPU, resolved by ``run_batch``); each worker runs its tiles' models on its own
        device, whatever the config's ``engine.device`` says.
    """

    workers: int | None = None
    threads: int | None = None
    memory_limit: str | None = None
    scheduler: str | None = None
    jobqueue: str | None = None
    processes: bool = True
    devices: tuple[str, ...] | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments of :func:`~geomed_seg.batch.cluster.open_client`.

        With ``devices`` the local cluster gets one single-threaded worker process per
        device (the devices themselves are pinned by ``batch.cluster.pin_devices``).

        Raises
        ------
        InvalidInputError
            ``devices`` with ``scheduler`` or ``jobqueue``, or with a different ``workers``.
        """
        kw = asdict(self)
        devices = kw.pop("devices")
        if devices:
            if self.scheduler or self.jobqueue:
                raise InvalidInputError(
                    "--devices starts one local worker per device; it cannot be combined with "
                    "--scheduler or --jobqueue (start GPU workers on that cluster instead)"
                )
            if self.workers not in (None, len(devices)):
                raise InvalidInputError(
                    f"--workers {self.workers} with --devices {','.join(devices)}: "
                    "one worker per device"
                )
            kw["workers"] = len(devices)
            kw["threads"] = self.threads or 1
        return kw


@dataclass(frozen=True)
class BatchOptions:
    """How a batch runs (see :func:`geomed_seg.batch.runner.run_batch`).

    Attributes
    ----------
    overrides : tuple of str
        ``key.sub=value`` config edits (part of the config hash).
    retries : int
        Extra attempts for a failing tile before it is recorded as failed.
    restart : bool
        Discard the journal and tile outputs (needed when the config hash changed).
    block_size : int or (rows, cols), optional
        Split every raster larger than this (pixels) into blocks, one task each (see
        :func:`geomed_seg.batch.manifest.build_jobs`); rasters only, on the input grid.
    halo : int, optional
        Context pixels read around each block core; default: what the pipeline's steps need
        (``max(engine.roi_size)`` for a checkpoint).
    cog : bool
        Also build ``OUT/mosaic.tif``, one Cloud-Optimised GeoTIFF of all label tiles.
    threshold_scope : {"batch", "tile"}
        ``"batch"``: a method that derives its threshold from the data (Otsu) gets one
        threshold from the histograms of all tiles/blocks, merged in a journalled pass 1
        (:mod:`geomed_seg.batch.thresholds`); ``"tile"``: each task decides its own. A
        ``model.threshold`` in the config always wins (no pass 1).
    cluster : ClusterOptions
        Where the tasks run.
    on_start, on_tile : callables, optional
        ``on_start(total, todo, dashboard_link)`` once; ``on_tile(record)`` per finished tile.
    """

    overrides: tuple[str, ...] = ()
    retries: int = 1
    restart: bool = False
    block_size: int | tuple[int, ...] | None = None
    halo: int | None = None
    cog: bool = False
    threshold_scope: str = "batch"
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    on_start: Callable[[int, int, str | None], None] | None = None
    on_tile: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if self.block_size is not None and not isinstance(self.block_size, int):
            object.__setattr__(self, "block_size", tuple(self.block_size))
        if self.retries < 0:
            raise InvalidInputError(f"--retries {self.retries}: must be >= 0")
        if self.threshold_scope not in THRESHOLD_SCOPES:
            raise InvalidInputError(
                f"--threshold-scope {self.threshold_scope!r}: choose one of "
                f"{', '.join(THRESHOLD_SCOPES)}"
            )

    @classmethod
    def of(cls, options: BatchOptions | None = None, **changes: Any) -> BatchOptions:
        """Return ``options`` (defaults when None) with ``changes`` by name; the names of
        :class:`ClusterOptions` fields (``workers``, ``processes``...) go to ``cluster``."""
        base = options if options is not None else cls()
        cluster_names = {f.name for f in fields(ClusterOptions)}
        own = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - own - cluster_names)
        if unknown:
            raise TypeError(
                f"unknown batch option(s) {unknown}; known: {sorted(own | cluster_names)}"
            )
        cluster = {k: changes.pop(k) for k in list(changes) if k in cluster_names}
        if cluster:
            changes["cluster"] = replace(changes.get("cluster", base.cluster), **cluster)
        return replace(base, **changes) if changes else base


__all__ = ["THRESHOLD_SCOPES", "BatchOptions", "ClusterOptions"]
