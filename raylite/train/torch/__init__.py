"""raylite.train.torch: TorchTrainer, TorchConfig and the loop helpers (Ray's names).

Importing it needs torch (``pip install 'raylite[torch]'``)."""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("raylite.train.torch needs torch: pip install 'raylite[torch]' "
                      "(torch==2.13.0)") from None

from raylite.train.torch.config import TorchConfig
from raylite.train.torch.torch_trainer import TorchTrainer
from raylite.train.torch.train_loop_utils import (
    get_device,
    get_devices,
    prepare_data_loader,
    prepare_model,
)

__all__ = ["TorchTrainer", "TorchConfig", "get_device", "get_devices", "prepare_model",
           "prepare_data_loader"]
