"""A small character-level GPT (nanoGPT-style), trained in notebooks/04_train.ipynb and
served by the LLM notebook.

The model is karpathy/nanoGPT's shape, written small: token and position embeddings,
``n_layer`` pre-norm blocks of causal self-attention and an MLP, a tied output head.
:class:`CharTokenizer` maps characters to ids. A model directory holds ``config.json``
(the :class:`GPTConfig` plus the tokenizer's characters) and ``model.pt`` (the state
dict): :func:`save_pretrained` writes one and :func:`load_pretrained` reads it back
(from a local path; copy from cloud storage first with ``Checkpoint.to_directory``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

__all__ = ["GPTConfig", "GPT", "CharTokenizer", "save_pretrained", "load_pretrained",
           "pydoc_text"]


@dataclass
class GPTConfig:
    block_size: int = 64    # the longest context, in characters
    vocab_size: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied, as in GPT-2
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits ``(B, T, vocab)``, and the cross-entropy loss when ``targets`` given."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} > block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled ids to ``idx`` ``(B, T)`` (no KV cache:
        the LLM engine has one)."""
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size:]
            logits, _ = self(ctx)
            logits = logits[:, -1, :] / max(temperature, 1e-5)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -math.inf
            probs = F.softmax(logits, dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return idx


class CharTokenizer:
    """Characters to ids and back; unknown characters map to id 0."""

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> list[int]:
        return [self.stoi.get(c, 0) for c in s]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids if 0 <= int(i) < len(self.chars))


def save_pretrained(model: GPT, tokenizer: CharTokenizer, path: str) -> str:
    """Write ``config.json`` and ``model.pt`` into ``path`` (made if missing)."""
    os.makedirs(path, exist_ok=True)
    raw = getattr(model, "module", model)  # unwrap DistributedDataParallel
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "raylite-char-gpt", "config": asdict(raw.config),
                   "chars": tokenizer.chars}, f)
    torch.save(raw.state_dict(), os.path.join(path, "model.pt"))
    return path


def load_pretrained(path: str, map_location: str = "cpu") -> tuple[GPT, CharTokenizer]:
    """A model directory (see :func:`save_pretrained`) as ``(model, tokenizer)``; the
    model is in eval mode."""
    with open(os.path.join(path, "config.json")) as f:
        meta = json.load(f)
    model = GPT(GPTConfig(**meta["config"]))
    state = torch.load(os.path.join(path, "model.pt"), map_location=map_location,
                       weights_only=True)
    model.load_state_dict(state)
    return model.eval(), CharTokenizer(meta["chars"])


def pydoc_text(limit: int | None = None) -> str:
    """Text that ships with Python: the help topics of ``pydoc`` (about 700 kB)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return text[:limit] if limit else text
