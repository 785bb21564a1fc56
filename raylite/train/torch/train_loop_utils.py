"""Helpers a torch training loop calls: ``get_device``, ``prepare_model``,
``prepare_data_loader`` (Ray: ``ray.train.torch``)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from raylite.train._internal.session import get_session, session_device

__all__ = ["get_device", "get_devices", "prepare_model", "prepare_data_loader"]


def _world_size() -> int:
    s = get_session()
    return s.world_size if s is not None else 1


def get_device() -> torch.device:
    """This worker's device: its GPU when the trainer uses GPUs, else the CPU."""
    return session_device()


def get_devices() -> list[torch.device]:
    return [get_device()]


def prepare_model(model: torch.nn.Module, move_to_device: bool | torch.device = True,
                  parallel_strategy: str | None = "ddp",
                  parallel_strategy_kwargs: dict | None = None) -> torch.nn.Module:
    """Move ``model`` to this worker's device and wrap it in DistributedDataParallel
    when there is more than one worker (``parallel_strategy="fsdp"`` is not supported
    in raylite; None leaves the model unwrapped)."""
    device = get_device()
    if move_to_device:
        model = model.to(move_to_device if isinstance(move_to_device, torch.device) else device)
    if parallel_strategy is None or _world_size() <= 1 or not torch.distributed.is_initialized():
        return model
    if parallel_strategy != "ddp":
        raise ValueError(f"parallel_strategy {parallel_strategy!r} is not supported; use 'ddp'")
    kwargs = dict(parallel_strategy_kwargs or {})
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device])
        kwargs.setdefault("output_device", device)
    return torch.nn.parallel.DistributedDataParallel(model, **kwargs)


class _DeviceLoader:
    """A DataLoader whose batches arrive on this worker's device."""

    def __init__(self, loader: DataLoader, device: torch.device):
        self._loader = loader
        self._device = device

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        for batch in self._loader:
            yield _move(batch, self._device)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def _move(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    return batch


def prepare_data_loader(data_loader: DataLoader, add_dist_sampler: bool = True,
                        move_to_device: bool = True, auto_transfer: bool = True):
    """Give each worker its part of ``data_loader``'s data (a DistributedSampler, that
    shuffles when the loader did) and move batches to the worker's device. Call
    ``loader.sampler.set_epoch(epoch)`` each epoch for a new shuffle, as with torch."""
    loader = data_loader
    if add_dist_sampler and _world_size() > 1 and torch.distributed.is_initialized() and \
            not isinstance(loader.sampler, DistributedSampler):
        shuffle = isinstance(loader.sampler, RandomSampler)
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size,
                            sampler=DistributedSampler(loader.dataset, shuffle=shuffle),
                            num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                            pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                            timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                            generator=loader.generator)
    device = get_device()
    if move_to_device and device.type != "cpu":
        return _DeviceLoader(loader, device)
    return loader
