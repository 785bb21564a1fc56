"""The training worker: an actor in one bundle of the run's placement group.

The controller asks each worker where it runs (``info``), sets up the backend
(``setup_torch``: a torch.distributed process group, rendezvous at rank 0's address),
then calls ``run`` with the training function, which runs in the actor's process with
a ``TrainSession`` in place.
"""

from __future__ import annotations

import inspect
import os
import socket


def call_train_fn(fn, config):
    """Ray's convention: a function of no arguments, or of one (the config dict)."""
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return fn(config if config is not None else {}) if params else fn()


class TrainWorker:
    def __init__(self):
        self.pg_ready = False

    def info(self) -> dict:
        import raylite

        ctx = raylite.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "gpu_ids": [str(g) for g in raylite.get_gpu_ids()]}

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def setup_torch(self, backend: str, master_addr: str, master_port: int, rank: int,
                    world_size: int, local_rank: int, local_world_size: int,
                    timeout_s: float) -> None:
        """Join the process group (every rank must call this at the same time)."""
        import datetime

        import torch.distributed as dist

        os.environ.update({"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
                           "RANK": str(rank), "WORLD_SIZE": str(world_size),
                           "LOCAL_RANK": str(local_rank),
                           "LOCAL_WORLD_SIZE": str(local_world_size)})
        if backend == "gloo" and master_addr.startswith("127.") and \
                "GLOO_SOCKET_IFNAME" not in os.environ:
            os.environ["GLOO_SOCKET_IFNAME"] = _loopback_ifname()
        if backend == "nccl":
            import torch

            torch.cuda.set_device(_local_cuda_device(local_rank))
        if dist.is_initialized():
            dist.destroy_process_group()
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))

    def execute(self, fn, *args):
        """Run ``fn(*args)`` here (a backend's set-up step, e.g. jax.distributed)."""
        return fn(*args)

    def run(self, fn, config, session_kwargs: dict):
        from raylite.train._internal import session as S

        s = S.init_session(**session_kwargs)
        try:
            call_train_fn(fn, config)
        finally:
            try:
                s.finish()
            finally:
                S.end_session()
        return None

    def shutdown_torch(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _loopback_ifname() -> str:
    """gloo must not pick an interface the other ranks cannot reach: with every rank on
    this machine, the loopback one."""
    try:
        import psutil

        for name, addrs in psutil.net_if_addrs().items():
            if any(a.address.startswith("127.") for a in addrs):
                return name
    except Exception:
        pass
    return "lo"


def _local_cuda_device(local_rank: int) -> int:
    """The CUDA device this worker uses: with CUDA_VISIBLE_DEVICES narrowed to its own
    GPUs (raylite sets it per worker) that is device 0."""
    import torch

    n = torch.cuda.device_count()
    return 0 if n <= 1 else local_rank % n
