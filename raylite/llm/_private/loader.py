"""Loading a model: a local directory (raylite GPT or HF safetensors), a cloud URI
(downloaded into a local cache first, see ``cloud.py``), or a module already built."""

from __future__ import annotations

import torch

from raylite.llm._private.gpt import GPT, is_own_model_dir

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def local_path(source: str) -> str:
    """A local directory for ``source``: itself, or a cloud URI's cached download."""
    if "://" in source:
        from raylite.llm._private.cloud import download_model

        return download_model(source)
    return source


def load_module(source: str, device: torch.device, dtype: str = "auto") -> torch.nn.Module:
    path = local_path(source)
    if is_own_model_dir(path):
        model = GPT.from_pretrained(path, device=device)
    else:
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise ImportError("Serving Hugging Face models needs transformers: "
                              "pip install 'raylite[llm]'") from None
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES.get(dtype, "auto"))
        model = model.to(device).eval()
    if dtype in DTYPES:
        model = model.to(DTYPES[dtype])
    return model
