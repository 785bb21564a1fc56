"""``TorchConfig``: the torch.distributed backend of a TorchTrainer."""

from __future__ import annotations

from dataclasses import dataclass

import raylite

__all__ = ["TorchConfig"]


@dataclass
class TorchConfig:
    """How the workers form a process group (Ray: ``ray.train.torch.TorchConfig``).

    ``backend`` None picks ``"nccl"`` when the workers have GPUs, else ``"gloo"``.
    ``init_method="env"``: rank 0's node address and a free port chosen on rank 0 are
    given to every rank as ``MASTER_ADDR``/``MASTER_PORT``. ``timeout_s`` bounds
    collective operations (and the rendezvous).
    """

    backend: str | None = None
    init_method: str = "env"
    timeout_s: int = 1800

    backend_name = "torch.distributed"

    def __post_init__(self):
        if self.init_method not in ("env", "tcp"):
            raise ValueError(f"init_method must be 'env' or 'tcp', got {self.init_method!r}")

    def resolved_backend(self, use_gpu: bool) -> str:
        return self.backend or ("nccl" if use_gpu else "gloo")

    def on_start(self, workers: list, ranked: list[dict], scaling_config) -> None:
        """Every worker joins one process group; rank 0's node hosts the rendezvous."""
        backend = self.resolved_backend(scaling_config.use_gpu)
        port = raylite.get(workers[0].free_port.remote())
        addr = ranked[0]["address"]
        raylite.get([w.setup_torch.remote(backend, addr, port, info["rank"], len(workers),
                                          info["local_rank"], info["local_world_size"],
                                          self.timeout_s)
                     for w, info in zip(workers, ranked, strict=True)],
                    timeout=self.timeout_s + 30)
