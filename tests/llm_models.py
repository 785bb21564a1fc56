"""Tiny models for the LLM tests, built from configs with random weights (nothing is
downloaded): raylite's GPT, HF GPT-2 and Llama, each saved as a model directory; the HF
ones get a BPE tokenizer trained here on text that ships with Python."""

from __future__ import annotations

import os

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _corpus() -> list[str]:
    from pydoc_data.topics import topics

    return list(topics.values())


def train_tokenizer(path: str, vocab_size: int = 384):
    """A byte-level BPE tokenizer (tokenizers) saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def make_gpt(path: str, *, n_layer=2, n_head=2, n_embd=32, block_size=256, std=0.3,
             seed=0):
    import torch

    from raylite.llm import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          block_size=block_size)).eval()
    for p in model.parameters():  # peaked logits: greedy choices are not near-ties
        p.data.normal_(0, std)
    model.save_pretrained(path)
    return model


def make_hf(path: str, kind: str, tokenizer_dir: str | None = None, seed: int = 0):
    """A tiny HF causal LM ("gpt2" or "llama") with the test tokenizer, saved to path."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    os.makedirs(path, exist_ok=True)
    tok = train_tokenizer(path)
    common = dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                  bos_token_id=tok.eos_token_id, initializer_range=0.3)
    if kind == "gpt2":
        cfg = GPT2Config(n_positions=256, n_embd=32, n_layer=2, n_head=2, **common)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256, **common)
        model = LlamaForCausalLM(cfg)
    model.eval().save_pretrained(path)
    return model, tok
