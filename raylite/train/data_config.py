"""``DataConfig``: how a trainer's datasets reach its workers (Ray: ``ray.train.DataConfig``)."""

from __future__ import annotations

import copy

__all__ = ["DataConfig"]


class DataConfig:
    """Which datasets are split among the workers, and how each one executes.

    ``datasets_to_split``: ``"all"`` or a list of names. A split dataset becomes
    ``streaming_split(world_size, equal=True, locality_hints=<each worker's node>)``;
    any other dataset is given whole to every worker. ``execution_options`` is one
    ``ExecutionOptions`` for every dataset, or a dict keyed by dataset name (names it
    does not list get the defaults). The training workers' resources are added to each
    dataset's ``exclude_resources``, so data tasks do not count on the CPUs the workers
    hold.
    """

    def __init__(self, datasets_to_split="all", execution_options=None,
                 enable_shard_locality: bool = True):
        if datasets_to_split != "all" and not isinstance(datasets_to_split, (list, tuple)):
            raise TypeError(f"datasets_to_split must be 'all' or a list of names, got "
                            f"{datasets_to_split!r}")
        self._to_split = datasets_to_split
        self._execution_options = execution_options
        self._locality = enable_shard_locality

    def _options_for(self, name: str):
        from raylite.data import ExecutionOptions

        opts = self._execution_options
        if isinstance(opts, dict):
            opts = opts.get(name)
        return copy.deepcopy(opts) if opts is not None else ExecutionOptions()

    def configure(self, datasets: dict, world_size: int, worker_node_ids: list,
                  worker_resources: dict | None = None) -> list[dict]:
        """Per worker, ``{name: DataIterator}``."""
        from raylite.data import ExecutionResources

        out: list[dict] = [{} for _ in range(world_size)]
        for name, ds in (datasets or {}).items():
            ds = ds.__class__(ds._sources, ds._ops, ds.context.copy())
            opts = self._options_for(name)
            if worker_resources:
                used = ExecutionResources(cpu=worker_resources.get("CPU", 0) * world_size,
                                          gpu=worker_resources.get("GPU", 0) * world_size)
                opts.exclude_resources = opts.exclude_resources.add(used)
            ds.context.execution_options = opts
            if self._to_split == "all" or name in self._to_split:
                hints = list(worker_node_ids) if self._locality else None
                for i, it in enumerate(ds.streaming_split(world_size, equal=True,
                                                          locality_hints=hints)):
                    out[i][name] = it
            else:
                for i in range(world_size):
                    out[i][name] = ds.iterator()
        return out

    def __repr__(self) -> str:
        return f"DataConfig(datasets_to_split={self._to_split!r})"
