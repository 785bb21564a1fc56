"""raylite's own GPT: nanoGPT's model (a dataclass config, pre-LayerNorm blocks, tied
embeddings) with GPT-2's module names, so the engine's GPT-2 forward serves both, and
its checkpoints are a ``config.json`` plus ``model.safetensors`` like a Hugging Face
model directory. Byte-level: token ids 0..255 are bytes, 256 is end-of-text.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

MODEL_TYPE = "raylite-gpt"


@dataclass
class GPTConfig:
    """nanoGPT's config; ``block_size`` is the longest context (positions)."""

    vocab_size: int = 257
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.act = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The model. ``forward(idx)`` gives logits (B, T, vocab) and, with ``targets``, the
    cross-entropy loss, for training; the engine serves it through its paged forward.
    Differs from nanoGPT: no dropout, GPT-2's attribute names, save/load as a directory."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias)))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                               ignore_index=-1)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path: str) -> None:
        """``config.json`` + ``model.safetensors`` (the tied head is not stored twice)."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"model_type": MODEL_TYPE, **asdict(self.config)}, f, indent=1)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                 if k != "lm_head.weight"}
        save_file(state, os.path.join(path, "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str, device="cpu") -> GPT:
        from safetensors.torch import load_file

        if is_char_model_dir(path):
            return load_char_gpt(path, device)[0]
        with open(os.path.join(path, "config.json")) as f:
            raw = json.load(f)
        raw.pop("model_type", None)
        model = cls(GPTConfig(**raw))
        model.load_state_dict(load_file(os.path.join(path, "model.safetensors")),
                              strict=False)
        return model.to(device).eval()


CHAR_MODEL_TYPE = "raylite-char-gpt"  # what raylite.models.gpt (notebook 04) saves
_CHAR_KEYS = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn",
              "attn.proj": "attn.c_proj", "mlp.0": "mlp.c_fc", "mlp.2": "mlp.c_proj"}


def _model_type(path: str) -> str | None:
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def is_own_model_dir(path: str) -> bool:
    """A directory of raylite's GPT (this module's, or notebook 04's character GPT)."""
    return _model_type(path) in (MODEL_TYPE, CHAR_MODEL_TYPE)


def is_char_model_dir(path: str) -> bool:
    return _model_type(path) == CHAR_MODEL_TYPE


def load_char_gpt(path: str, device="cpu") -> tuple[GPT, list[str]]:
    """The character GPT of ``raylite.models.gpt`` (``config.json`` with its config and
    characters, ``model.pt``) as this module's GPT (exact GELU), and its characters. The
    weights are renamed, not changed."""
    with open(os.path.join(path, "config.json")) as f:
        meta = json.load(f)
    c = meta["config"]
    model = GPT(GPTConfig(vocab_size=c["vocab_size"], block_size=c["block_size"],
                          n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"]))
    for blk in model.transformer.h:
        blk.mlp.act = nn.GELU()
    state = torch.load(os.path.join(path, "model.pt"), map_location="cpu",
                       weights_only=True)
    renamed = {}
    for key, value in state.items():
        if key == "head.weight":
            continue  # tied to wte
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            for old, new in _CHAR_KEYS.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            key = f"transformer.h.{i}.{rest}"
        else:
            key = "transformer." + key
        renamed[key] = value
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"{path}: not a raylite character GPT checkpoint "
                         f"(missing {missing}, unexpected {unexpected})")
    return model.to(device).eval(), meta["chars"]
