"""The causal-LM interface the engine drives, and its implementations.

A ``PagedCausalLM`` runs one step's flat batch of tokens (decode tokens and prefill
chunks of many sequences together, no padding) through the model, reading and writing
the paged KV cache through ``paged_attention``. The implementations reuse the layers of
a loaded ``torch.nn.Module`` (raylite's GPT or a Hugging Face GPT-2 / Llama) and replace
only its attention, so outputs equal the original model's. vLLM instead re-implements
each architecture; raylite supports the two families, GPT-2 and Llama (and Mistral,
which is Llama's shape).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from raylite.llm._private import cpu_linear
from raylite.llm._private.attention import AttentionMetadata, build_metadata, paged_attention


class PagedCausalLM:
    """The interface: shapes of the KV cache, a forward over a flat batch, the logits."""

    num_layers: int
    num_heads: int       # query heads on this worker
    num_kv_heads: int    # K/V heads on this worker (== num_heads without GQA)
    head_dim: int
    vocab_size: int
    max_model_len: int
    device: torch.device
    dtype: torch.dtype
    module: torch.nn.Module

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                md: AttentionMetadata, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> torch.Tensor:
        """input_ids, positions: [T]; returns the last hidden states [T, d]."""
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _first_param(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


class PagedGPT2(PagedCausalLM):
    """GPT-2 shaped models: HF ``GPT2LMHeadModel`` and raylite's ``GPT``.

    With ``all_reduce`` (tensor parallelism) the module passed in holds this worker's
    shard of the heads and MLP columns; the two output projections' partial sums are
    reduced across workers (Megatron's split)."""

    def __init__(self, module: torch.nn.Module, *, num_heads: int, max_model_len: int,
                 all_reduce: Callable[[torch.Tensor], None] | None = None):
        self.module = module
        tr = module.transformer
        self.wte, self.wpe, self.blocks, self.ln_f = tr.wte, tr.wpe, list(tr.h), tr.ln_f
        self.lm_head = module.lm_head
        self.num_layers = len(self.blocks)
        self.num_heads = self.num_kv_heads = num_heads
        d_local = cpu_linear.weight_out_in(self.blocks[0].attn.c_attn).shape[0] // 3
        self.head_dim = d_local // num_heads
        self.vocab_size = self.wte.weight.shape[0]
        self.max_model_len = max_model_len
        p = _first_param(module)
        self.device, self.dtype = p.device, p.dtype
        self._reduce = all_reduce
        self.scale = self.head_dim ** -0.5
        self.onednn = cpu_linear.supported(self.dtype, self.device)
        gelu = _gelu_kind(self.blocks[0].mlp.act)
        lin = partial(cpu_linear.linear, use_onednn=self.onednn)
        self._layers = []
        for blk in self.blocks:
            a, m = blk.attn, blk.mlp
            fc = lin(m.c_fc, gelu=gelu)
            if gelu is None:
                fc = _then(fc, m.act)
            self._layers.append((blk.ln_1, lin(a.c_attn), self._proj(a.c_proj, lin),
                                 blk.ln_2, fc, self._proj(m.c_proj, lin)))
        self._head = lin(self.lm_head)

    @torch.inference_mode()
    def forward(self, input_ids, positions, md, kv_caches):
        T = input_ids.shape[0]
        H, hd = self.num_heads, self.head_dim
        x = self.wte(input_ids) + self.wpe(positions)                 # (T, d)
        for (ln_1, qkv, proj, ln_2, fc, fc_proj), (kc, vc) in zip(self._layers, kv_caches,
                                                                  strict=True):
            q, k, v = qkv(ln_1(x)).split(H * hd, dim=-1)
            a = paged_attention(q.view(T, H, hd), k.view(T, H, hd), v.view(T, H, hd),
                                kc, vc, md, self.scale)
            x = x + proj(a)
            x = x + fc_proj(fc(ln_2(x)))
        return self.ln_f(x)

    def _proj(self, layer, lin):
        """An output projection; under tensor parallelism the partial sums are reduced
        across workers before the bias is added once."""
        if self._reduce is None:
            return lin(layer)
        matmul, reduce, bias = lin(layer, bias=False), self._reduce, layer.bias

        def proj(a):
            out = matmul(a)
            reduce(out)
            return out if bias is None else out + bias
        return proj

    @torch.inference_mode()
    def logits(self, hidden):
        return self._head(hidden).float()


class PagedLlama(PagedCausalLM):
    """Llama shaped models (HF ``LlamaForCausalLM``, ``MistralForCausalLM``): RMSNorm,
    rotary positions (the model's own rotary module, so its scaling variant is kept),
    grouped-query attention, a gated SiLU MLP."""

    def __init__(self, module: torch.nn.Module, *, max_model_len: int):
        self.module = module
        cfg = module.config
        inner = module.model
        self.embed, self.layers, self.norm = inner.embed_tokens, list(inner.layers), inner.norm
        self.rotary = inner.rotary_emb
        self.lm_head = module.lm_head
        self.num_layers = len(self.layers)
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.vocab_size = cfg.vocab_size
        self.max_model_len = max_model_len
        p = _first_param(module)
        self.device, self.dtype = p.device, p.dtype
        self.scale = self.head_dim ** -0.5
        self.onednn = cpu_linear.supported(self.dtype, self.device)
        lin = partial(cpu_linear.linear, use_onednn=self.onednn)
        self._linears = [
            tuple(lin(getattr(part, name)) for part, name in (
                (ly.self_attn, "q_proj"), (ly.self_attn, "k_proj"),
                (ly.self_attn, "v_proj"), (ly.self_attn, "o_proj"), (ly.mlp, "gate_proj"),
                (ly.mlp, "up_proj"), (ly.mlp, "down_proj")))
            for ly in self.layers]
        self._head = lin(self.lm_head)

    @torch.inference_mode()
    def forward(self, input_ids, positions, md, kv_caches):
        T = input_ids.shape[0]
        H, Hk, hd = self.num_heads, self.num_kv_heads, self.head_dim
        x = self.embed(input_ids)
        cos, sin = self.rotary(x[None], positions[None])              # (1, T, hd)
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]              # (T, 1, hd)
        for layer, lins, (kc, vc) in zip(self.layers, self._linears, kv_caches,
                                         strict=True):
            q_proj, k_proj, v_proj, o_proj, gate, up, down = lins
            h = layer.input_layernorm(x)
            q = _rope(q_proj(h).view(T, H, hd), cos, sin)
            k = _rope(k_proj(h).view(T, Hk, hd), cos, sin)
            v = v_proj(h).view(T, Hk, hd)
            x = x + o_proj(paged_attention(q, k, v, kc, vc, md, self.scale))
            h = layer.post_attention_layernorm(x)
            x = x + down(layer.mlp.act_fn(gate(h)) * up(h))
        return self.norm(x)

    @torch.inference_mode()
    def logits(self, hidden):
        return self._head(hidden).float()


def _gelu_kind(act) -> str | None:
    """GPT-2's activation as one fused GELU: "tanh" (the approximation; HF's own is five
    ops), "none" (exact), or None for any other activation (applied as the module)."""
    if type(act).__name__ in ("NewGELUActivation", "GELUTanh", "FastGELUActivation") or (
            isinstance(act, torch.nn.GELU) and act.approximate == "tanh"):
        return "tanh"
    if type(act).__name__ == "GELUActivation" or (
            isinstance(act, torch.nn.GELU) and act.approximate == "none"):
        return "none"
    return None


def _then(f, g):
    return lambda x: g(f(x))


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


LLAMA_TYPES = ("llama", "mistral")
GPT2_TYPES = ("gpt2",)


def wrap_module(module: torch.nn.Module, max_model_len: int | None = None) -> PagedCausalLM:
    """The paged forward for a loaded model (raylite's GPT or an HF causal LM)."""
    from raylite.llm._private.gpt import GPT

    if isinstance(module, GPT):
        return PagedGPT2(module, num_heads=module.config.n_head,
                         max_model_len=min(max_model_len or 1 << 30,
                                           module.config.block_size))
    cfg = getattr(module, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind in GPT2_TYPES:
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(
                cfg, "reorder_and_upcast_attn", False):
            raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx or "
                             "reorder_and_upcast_attn are not supported")
        return PagedGPT2(module, num_heads=cfg.n_head,
                         max_model_len=min(max_model_len or 1 << 30, cfg.n_positions))
    if kind in LLAMA_TYPES:
        if getattr(cfg, "sliding_window", None):
            raise ValueError("sliding-window attention is not supported")
        return PagedLlama(module, max_model_len=min(max_model_len or 1 << 30,
                                                    cfg.max_position_embeddings))
    raise ValueError(f"raylite.llm serves raylite GPT, GPT-2 and Llama-family models; "
                     f"got model_type={kind!r}")


def step_logits(model: PagedCausalLM, ids: list[int], pos: list[int], decode: list,
                prefill: list, rows: list[int], kv_caches, *, block_size: int,
                backend: str):
    """One forward over a step's flat batch; the logits of the given rows (None when
    there are none). A tensor-parallel model runs the same on each of its workers."""
    md = build_metadata(decode, prefill, block_size=block_size,
                        num_heads=model.num_heads, num_kv_heads=model.num_kv_heads,
                        device=model.device, backend=backend)
    input_ids = torch.tensor(ids, dtype=torch.long).to(model.device, non_blocking=True)
    positions = torch.tensor(pos, dtype=torch.long).to(model.device, non_blocking=True)
    hidden = model.forward(input_ids, positions, md, kv_caches)
    return model.logits(hidden[rows]) if rows else None
