"""Linear layers for the CPU engine: oneDNN with the weight packed once at load.

torch's float32 ``nn.Linear`` on the CPU calls MKL's sgemm, which repacks the weight on
every call and, on this AMD EPYC, runs the engine's shapes (a step of ~32 tokens times a
384 x 1536 weight) at ~60 GFLOP/s. oneDNN with the weight reordered once into its
blocked layout runs them at ~130 GFLOP/s, and fuses GPT-2's tanh GELU into the
``c_fc`` matmul. This is what torch's own inductor does for frozen CPU models
(``torch.ops.mkldnn._linear_pointwise``, a private op: torch is pinned to 2.13, and
``supported()`` checks the op against ``F.linear`` once, falling back to torch's own
linear when it is missing or disagrees). vLLM's CPU backend likewise runs its linears through
oneDNN.

A packed weight is a copy: changing the module's weights after the engine was built does
not change what the engine computes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PACK_BATCH = 32  # the batch size oneDNN's weight layout is picked for (any batch works)
_ok: bool | None = None


def weight_out_in(layer) -> torch.Tensor:
    """The weight as [out, in]: ``nn.Linear`` stores it so, HF's ``Conv1D`` transposed."""
    w = layer.weight
    return w if isinstance(layer, torch.nn.Linear) else w.t()


def supported(dtype: torch.dtype, device: torch.device) -> bool:
    """oneDNN packing is used for float32 on the CPU when the op exists and agrees with
    ``F.linear`` (checked once per process); ``RAYLITE_ONEDNN_LINEAR=0`` turns it off."""
    global _ok
    if device.type != "cpu" or dtype != torch.float32:
        return False
    if _ok is None:
        _ok = os.environ.get("RAYLITE_ONEDNN_LINEAR", "1") != "0" and _probe()
    return _ok


def _probe() -> bool:
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        w, b = torch.randn(48, 40, generator=g), torch.randn(48, generator=g)
        x = torch.randn(5, 40, generator=g)
        with torch.inference_mode():
            got = torch.ops.mkldnn._linear_pointwise(
                x, torch.ops.mkldnn._reorder_linear_weight(w, PACK_BATCH), b, "none", [], "")
            return bool(torch.allclose(got, F.linear(x, w, b), rtol=1e-4, atol=1e-4))
    except (AttributeError, RuntimeError) as e:
        log.info("oneDNN linear unavailable (%s): using torch's", e)
        return False


def packed(layer, *, bias: bool = True, gelu: str | None = None
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> layer(x)`` for x of shape [T, in] through a packed oneDNN weight; with
    ``gelu`` ("tanh" or "none", torch's ``approximate``) the GELU is fused in; with
    ``bias=False`` the bias is left out."""
    with torch.inference_mode():
        w = torch.ops.mkldnn._reorder_linear_weight(
            weight_out_in(layer).detach().contiguous(), PACK_BATCH)
    b = getattr(layer, "bias", None) if bias else None
    b = None if b is None else b.detach()
    op = torch.ops.mkldnn._linear_pointwise
    if gelu is not None:
        return lambda x: op(x, w, b, "gelu", [], gelu)
    return lambda x: op(x, w, b, "none", [], "")


def plain(layer, *, bias: bool = True, gelu: str | None = None
          ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same as ``packed`` through torch's own ops (any dtype and device)."""
    w = weight_out_in(layer)
    b = getattr(layer, "bias", None) if bias else None
    if gelu is not None:
        return lambda x: F.gelu(F.linear(x, w, b), approximate=gelu)
    return lambda x: F.linear(x, w, b)


def linear(layer, *, use_onednn: bool, bias: bool = True, gelu: str | None = None):
    """``packed`` or ``plain``."""
    return (packed if use_onednn else plain)(layer, bias=bias, gelu=gelu)
