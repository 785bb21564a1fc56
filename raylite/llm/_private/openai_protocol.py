"""The OpenAI API's shapes: request bodies in (checked, turned into SamplingParams),
responses and server-sent-event chunks out, errors as ``{"error": {...}}``.

Only what raylite's engine can honour is accepted: ``n`` must be 1, and penalties,
``best_of``, ``echo`` and ``suffix`` are refused with a 400 rather than silently
ignored (vLLM implements more of them).
"""

from __future__ import annotations

import json
import time
import uuid

from raylite.llm._private.sampling import SamplingParams


class OpenAIError(Exception):
    """An error with its HTTP status, shaped as OpenAI's (``to_dict``)."""

    def __init__(self, status: int, message: str, type: str = "BadRequestError",
                 param: str | None = None):
        super().__init__(status, message, type, param)
        self.status, self.message, self.type, self.param = status, message, type, param

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.status}}


def bad(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "BadRequestError", param)


UNSUPPORTED = ("best_of", "suffix", "logit_bias", "tools", "functions", "response_format")


def sampling_params(body: dict, *, chat: bool) -> SamplingParams:
    """SamplingParams from a request body; OpenAIError(400) for what is wrong."""
    if body.get("n", 1) != 1:
        raise bad("only n=1 is supported", "n")
    if body.get("echo"):
        raise bad("echo is not supported", "echo")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key):
            raise bad(f"{key} is not supported", key)
    for key in UNSUPPORTED:
        if body.get(key) is not None:
            raise bad(f"{key} is not supported", key)
    max_tokens = body.get("max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = body.get("max_tokens", 256 if chat else 16)
    if chat:
        logprobs = body.get("top_logprobs", 0) if body.get("logprobs") else None
    else:
        logprobs = body.get("logprobs")
    stop = body.get("stop") or []
    kwargs = dict(max_tokens=max_tokens, stop=[stop] if isinstance(stop, str) else stop,
                  stop_token_ids=body.get("stop_token_ids") or [],
                  temperature=body.get("temperature", 1.0) if body.get("temperature")
                  is not None else 1.0,
                  top_p=body.get("top_p", 1.0) if body.get("top_p") is not None else 1.0,
                  top_k=body.get("top_k", -1) if body.get("top_k") is not None else -1,
                  seed=body.get("seed"), logprobs=logprobs,
                  ignore_eos=bool(body.get("ignore_eos", False)))
    for name, kind in (("max_tokens", int), ("temperature", (int, float)),
                       ("top_p", (int, float)), ("top_k", int)):
        if isinstance(kwargs[name], bool) or not isinstance(kwargs[name], kind):
            raise bad(f"{name} must be a number", name)
    if kwargs["seed"] is not None and not isinstance(kwargs["seed"], int):
        raise bad("seed must be an integer", "seed")
    if not isinstance(kwargs["stop"], list) or not all(isinstance(s, str)
                                                        for s in kwargs["stop"]):
        raise bad("stop must be a string or a list of strings", "stop")
    try:
        return SamplingParams(**kwargs)
    except (ValueError, TypeError) as e:
        raise bad(str(e)) from None


def completion_prompt(body: dict):
    """The prompt of a completions request: text or a list of token ids."""
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str) and p:
        return p
    if isinstance(p, list) and p and all(isinstance(i, int) and not isinstance(i, bool)
                                         for i in p):
        return p
    raise bad("prompt must be a non-empty string or list of token ids (one prompt)",
              "prompt")


def chat_messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in msgs):
        raise bad("messages must be a non-empty list of {role, content}", "messages")
    return msgs


# ---------------------------------------------------------------- responses


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def logprobs_block(tokenizer, token_ids, lps, *, chat: bool):
    """OpenAI's logprobs for the given tokens (chat or completions shape)."""
    if lps is None:
        return None
    toks = [tokenizer.decode([t]) for t in token_ids]
    if chat:
        return {"content": [
            {"token": s, "logprob": lp, "bytes": list(s.encode()),
             "top_logprobs": [{"token": tokenizer.decode([i]), "logprob": v,
                               "bytes": list(tokenizer.decode([i]).encode())}
                              for i, v in top.items()]}
            for s, (lp, top) in zip(toks, lps, strict=True)]}
    offsets, pos = [], 0
    for s in toks:
        offsets.append(pos)
        pos += len(s)
    return {"tokens": toks, "token_logprobs": [lp for lp, _ in lps],
            "top_logprobs": [{tokenizer.decode([i]): v for i, v in top.items()}
                             for _, top in lps],
            "text_offset": offsets}


def full_response(rid: str, model: str, out, tokenizer, *, chat: bool) -> dict:
    lp = logprobs_block(tokenizer, out.token_ids, out.logprobs, chat=chat)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": out.text},
                  "logprobs": lp, "finish_reason": out.finish_reason}
    else:
        choice = {"index": 0, "text": out.text, "logprobs": lp,
                  "finish_reason": out.finish_reason}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice],
            "usage": usage(len(out.prompt_token_ids), len(out.token_ids))}


def sse(obj) -> str:
    return "data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n"


def stream_chunk(rid: str, model: str, created: int, *, chat: bool, text: str | None,
                 finish_reason=None, logprobs=None, role: bool = False) -> dict:
    if chat:
        delta = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": logprobs,
                  "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": logprobs,
                  "finish_reason": finish_reason}
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": model, "choices": [choice]}
