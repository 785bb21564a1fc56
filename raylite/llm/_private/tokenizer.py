"""Tokenizers the engine uses: bytes for raylite's GPT, the model's own for HF models.

Both give ``encode(text) -> ids``, ``decode(ids) -> str``, ``eos_token_id`` and
``apply_chat_template(messages) -> str``. Decoding is incremental in the engine: it
decodes a sequence's output so far and holds back a trailing partial UTF-8 character
(shown as U+FFFD) until the next token completes it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
EOT = 256
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                   "tokenizer.model")


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, end-of-text 256."""

    eos_token_id = EOT
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict]) -> str:
        """A plain transcript: ``role: content`` lines, then ``assistant:``."""
        lines = [f"{m['role']}: {_content(m)}" for m in messages]
        return "\n".join(lines) + "\nassistant:"


class CharTokenizer:
    """Characters as tokens (notebook 04's character GPT); no end-of-text token, and
    an unknown character is id 0, as in ``raylite.models.gpt``."""

    eos_token_id = None

    def __init__(self, chars):
        self.chars = "".join(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, 0) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids if 0 <= i < len(self.chars))

    def apply_chat_template(self, messages: list[dict]) -> str:
        return ByteTokenizer().apply_chat_template(messages)


class HFTokenizer:
    """A ``transformers`` tokenizer loaded from the model directory."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(path)
        self.eos_token_id = self._tok.eos_token_id
        self.vocab_size = len(self._tok)

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text)["input_ids"])

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict]) -> str:
        msgs = [{"role": m["role"], "content": _content(m)} for m in messages]
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(msgs, tokenize=False,
                                                 add_generation_prompt=True)
        return ByteTokenizer().apply_chat_template(msgs)


def _content(message: dict) -> str:
    c = message.get("content") or ""
    if isinstance(c, list):  # OpenAI content parts: keep the text ones
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return str(c)


def load_tokenizer(path: str | None):
    """The byte tokenizer for a raylite GPT directory (or None), else HF's."""
    from raylite.llm._private.gpt import is_char_model_dir, is_own_model_dir

    if path is not None and is_char_model_dir(path):
        import json

        with open(os.path.join(path, "config.json")) as f:
            return CharTokenizer(json.load(f)["chars"])
    if path is None or is_own_model_dir(path):
        return ByteTokenizer()
    if not os.path.isdir(path):
        raise ValueError(f"tokenizer directory {path!r} does not exist")
    if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        log.warning("no tokenizer files in %s: using the byte tokenizer", path)
        return ByteTokenizer()
    return HFTokenizer(path)
