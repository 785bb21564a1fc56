"""raylite.train.jax: JaxTrainer and JaxConfig (Ray's names). Needs jax
(``pip install 'raylite[jax]'``)."""

from __future__ import annotations

from raylite.train.jax.config import JaxConfig
from raylite.train.jax.jax_trainer import JaxTrainer

__all__ = ["JaxTrainer", "JaxConfig"]
