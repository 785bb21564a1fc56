"""The engine: requests in, tokens out, one step at a time.

``step()`` asks the scheduler for this iteration's work (decode tokens and prefill
chunks of many sequences), runs them through the model as one flat batch over the paged
KV cache, samples a token for every sequence whose prompt is fully computed, applies
stop conditions and returns what changed. Sequences join and leave at every step
(continuous batching). ``generate()`` loops ``step()`` for a list of prompts (vLLM's
``LLM.generate``); ``AsyncLLMEngine`` drives it from a thread for many async callers.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial

import torch

from raylite.llm._private import cpu_kernel
from raylite.llm._private.config import EngineConfig
from raylite.llm._private.kv_cache import BlockManager
from raylite.llm._private.loader import load_module, local_path, pick_device
from raylite.llm._private.models import PagedCausalLM, step_logits, wrap_module
from raylite.llm._private.sampling import SamplingParams, sample
from raylite.llm._private.scheduler import FINISHED, RUNNING, Scheduler, Sequence
from raylite.llm._private.tokenizer import ByteTokenizer, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class RequestOutput:
    """What a step produced for one request: the text and tokens so far, what is new
    since the last output (``delta_*``), and whether it finished (``finish_reason``:
    "stop", "length" or "abort"). ``logprobs``: per token so far, (logprob, {id:
    logprob}); ``delta_logprobs`` the new tokens' (None unless asked for)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    delta_text: str
    delta_token_ids: list[int]
    finished: bool
    finish_reason: str | None = None
    logprobs: list | None = None
    delta_logprobs: list | None = None
    num_cached_tokens: int = 0
    metrics: dict = field(default_factory=dict)


class LLMEngine:
    """A continuous-batching engine over a paged KV cache.

    ``model``: a local directory or cloud URI (raylite GPT or HF GPT-2/Llama), an
    ``nn.Module``, or a ``PagedCausalLM``. Differs from vLLM: one process (or a tensor-
    parallel group of raylite actors), torch plus one small C kernel for CPU decode
    attention (compiled on first use; no custom CUDA kernels), n=1.
    """

    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None,
                 **engine_kwargs):
        cfg = config or EngineConfig.from_kwargs(engine_kwargs)
        self.config = cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        device = pick_device(cfg.device)
        if isinstance(model, str):
            self.model_source = model
            tok_source = tokenizer if isinstance(tokenizer, str) else local_path(model)
            module = load_module(model, device, cfg.dtype)
            tokenizer = None if isinstance(tokenizer, str) else tokenizer
        else:
            self.model_source, tok_source, module = None, None, model
        if isinstance(module, PagedCausalLM):
            self.model = module
        elif cfg.tensor_parallel_size > 1:
            from raylite.llm._private.tensor_parallel import TensorParallelModel

            self.model = TensorParallelModel(module, cfg.tensor_parallel_size,
                                             max_model_len=cfg.max_model_len,
                                             num_cpus=cfg.tp_worker_num_cpus,
                                             num_gpus=cfg.tp_worker_num_gpus)
        else:
            self.model = wrap_module(module.to(device).eval(), cfg.max_model_len)
        if tokenizer is None:
            tokenizer = load_tokenizer(tok_source) if tok_source else ByteTokenizer()
        self.tokenizer = tokenizer
        m = self.model
        cfg.attention_backend = _pick_backend(cfg.attention_backend, m)
        self.max_model_len = m.max_model_len
        elem = torch.empty((), dtype=m.dtype).element_size()
        per_block = 2 * m.num_layers * cfg.block_size * m.num_kv_heads * m.head_dim * elem
        n_blocks = cfg.num_kv_blocks or max(1, int(cfg.kv_cache_memory_mb * 2**20 // per_block))
        self.blocks = BlockManager(n_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, max_num_seqs=cfg.max_num_seqs,
                                   max_num_batched_tokens=cfg.max_num_batched_tokens,
                                   enable_chunked_prefill=cfg.enable_chunked_prefill)
        self.kv_caches = self._allocate_kv(n_blocks)
        self._seqs: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self._counters = {"steps": 0, "generated_tokens": 0, "prompt_tokens": 0,
                          "finished": 0, "aborted": 0}
        self._recent: deque = deque(maxlen=256)   # (time, tokens generated in step)
        self._ttft: deque = deque(maxlen=256)
        self._step_time: deque = deque(maxlen=64)

    def _allocate_kv(self, n_blocks: int):
        m, bs = self.model, self.config.block_size
        if hasattr(m, "allocate_kv"):
            return m.allocate_kv(n_blocks, bs)
        shape = (n_blocks, bs, m.num_kv_heads, m.head_dim)
        return [(torch.zeros(shape, dtype=m.dtype, device=m.device),
                 torch.zeros(shape, dtype=m.dtype, device=m.device))
                for _ in range(m.num_layers)]

    # ------------------------------------------------------------------ requests
    def add_request(self, request_id: str | None, prompt: str | list[int],
                    params: SamplingParams | None = None) -> str:
        """Queue a request; returns its id. ``prompt`` is text or token ids. Raises
        ValueError for a prompt that cannot fit (longer than the model's context or the
        whole KV cache) or a duplicate id."""
        seq = self.prepare(request_id, prompt, params)
        self.admit(seq)
        return seq.request_id

    def prepare(self, request_id: str | None, prompt: str | list[int],
                params: SamplingParams | None = None) -> Sequence:
        """Tokenize and check a request without touching the engine's state (safe from
        any thread); ``admit`` queues it."""
        params = params or SamplingParams()
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        text = prompt if isinstance(prompt, str) else None
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens; this model's context is "
                             f"{self.max_model_len}")
        if any(not 0 <= i < self.model.vocab_size for i in ids):
            raise ValueError(f"prompt token ids must be in [0, {self.model.vocab_size})")
        longest = min(len(ids) + params.max_tokens, self.max_model_len)
        if self.blocks.blocks_needed(longest) > self.blocks.num_blocks:
            raise ValueError(f"a sequence of {longest} tokens needs more KV blocks than "
                             f"the cache has ({self.blocks.num_blocks} of "
                             f"{self.blocks.block_size} tokens)")
        seq = Sequence(request_id, ids, params, prompt=text)
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.model.device).manual_seed(params.seed)
        return seq

    def admit(self, seq: Sequence) -> None:
        if seq.request_id in self._seqs:
            raise ValueError(f"request id {seq.request_id!r} is already running")
        seq.arrival_time = time.monotonic()
        self._seqs[seq.request_id] = seq
        self._counters["prompt_tokens"] += len(seq.prompt_ids)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> bool:
        """Stop a request now and free its blocks; False if it is not running."""
        seq = self._seqs.pop(str(request_id), None)
        if seq is None:
            return False
        self.scheduler.remove(seq)
        seq.status, seq.finish_reason = FINISHED, "abort"
        self._counters["aborted"] += 1
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work()

    # ------------------------------------------------------------------ the step
    def step(self) -> list[RequestOutput]:
        """Run one iteration; returns an output for every request that got a token."""
        t0 = time.monotonic()
        plan = self.scheduler.schedule()
        if not plan.seqs:
            return []
        ids, pos, decode, prefill = [], [], [], []
        for i, (seq, n) in enumerate(plan.seqs):
            start = seq.num_computed
            ids.extend(seq.all_ids[start:start + n])
            pos.extend(range(start, start + n))
            if i < plan.num_decode:
                decode.append((seq.block_table, start))
            else:
                prefill.append((seq.block_table, start, n))
        rows, done = [], []
        off = 0
        for seq, n in plan.seqs:
            off += n
            if seq.num_computed + n == seq.num_tokens:
                rows.append(off - 1)
                done.append(seq)
        m = self.model
        # a tensor-parallel model runs the step on its workers
        run = getattr(m, "step_logits", None) or partial(step_logits, m)
        try:
            logits = run(ids, pos, decode, prefill, rows, self.kv_caches,
                         block_size=self.config.block_size,
                         backend=self.config.attention_backend)
        except RuntimeError as e:
            if self.config.attention_backend != "sparse" or m.device.type == "cpu":
                raise
            # a device whose torch lacks a sparse kernel: copy the blocks instead (the
            # step is safe to redo: it rewrites the same K/V into the same slots)
            log.warning("sparse paged attention failed on %s (%s); using the gather "
                        "backend", m.device, e)
            self.config.attention_backend = "gather"
            logits = run(ids, pos, decode, prefill, rows, self.kv_caches,
                         block_size=self.config.block_size, backend="gather")
        for seq, n in plan.seqs:
            self.scheduler.computed(seq, n)
        outputs = []
        if done:
            tokens, lps = sample(logits, [s.params for s in done],
                                 [s.generator for s in done])
            now = time.monotonic()
            for seq, tok, lp in zip(done, tokens.tolist(), lps, strict=True):
                outputs.append(self._append(seq, tok, lp, now))
        self._counters["steps"] += 1
        self._counters["generated_tokens"] += len(done)
        self._recent.append((time.monotonic(), len(done)))
        self._step_time.append(time.monotonic() - t0)
        return outputs

    def _append(self, seq: Sequence, tok: int, lp, now: float) -> RequestOutput:
        p = seq.params
        seq.output_ids.append(tok)
        if lp is not None:
            seq.logprobs.append(lp)
        if seq.first_token_time is None:
            seq.first_token_time = now
            self._ttft.append(now - seq.arrival_time)
        n_text = len(seq.output_ids)
        if tok in p.stop_token_ids or (tok == self.tokenizer.eos_token_id
                                       and not p.ignore_eos):
            seq.finish_reason = "stop"
            n_text -= 1
        elif len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = "length"
        text = self.tokenizer.decode(seq.output_ids[:n_text])
        visible = text
        if p.stop:
            hit = _find_stop(text, p.stop, max(0, seq.sent_text - max(map(len, p.stop))))
            if hit is not None:
                visible = text = text[:hit]
                seq.finish_reason = "stop"
        if seq.finish_reason is None:
            visible = _hold_back(text, p.stop)
        seq.text = text
        delta = visible[seq.sent_text:]
        seq.sent_text = max(seq.sent_text, len(visible))
        new_ids = seq.output_ids[seq.sent_tokens:]
        seq.sent_tokens = len(seq.output_ids)
        finished = seq.finish_reason is not None
        if finished:
            self.scheduler.remove(seq)
            seq.status = FINISHED
            self._seqs.pop(seq.request_id, None)
            self._counters["finished"] += 1
        return RequestOutput(
            seq.request_id, seq.prompt, seq.prompt_ids, seq.text if finished else visible,
            list(seq.output_ids), delta, new_ids, finished, seq.finish_reason,
            list(seq.logprobs) if p.logprobs is not None else None,
            seq.logprobs[-len(new_ids):] if p.logprobs is not None else None,
            seq.num_cached_tokens,
            {"arrival_time": seq.arrival_time, "first_token_time": seq.first_token_time,
             "num_preemptions": seq.num_preemptions})

    # ------------------------------------------------------------------ helpers
    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[RequestOutput]:
        """Run prompts (text or token ids) to completion; outputs in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        plist = params if isinstance(params, list) else [params] * len(prompts)
        rids = [self.add_request(None, p, sp) for p, sp in zip(prompts, plist, strict=True)]
        final: dict[str, RequestOutput] = {}
        while len(final) < len(rids):
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[r] for r in rids]

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers, if any (a local model needs nothing)."""
        stop = getattr(self.model, "shutdown", None)
        if stop is not None:
            stop()

    def stats(self) -> dict:
        """A snapshot: queue lengths, KV blocks, prefix cache, throughput, latency."""
        now = time.monotonic()
        window = [(t, n) for t, n in self._recent if now - t <= 5.0]
        span = (now - window[0][0]) if len(window) > 1 else 0.0
        st = self.blocks.stats
        ttft = sorted(self._ttft)
        running = self.scheduler.running
        return {
            **self._counters,
            "running": len(running), "waiting": len(self.scheduler.waiting),
            "kv_blocks_total": self.blocks.num_blocks, "kv_blocks_used": self.blocks.num_used,
            "kv_blocks_cached": self.blocks.num_cached, "block_size": self.blocks.block_size,
            "prefix_cache_queries": st.queries, "prefix_cache_hits": st.hits,
            "prefix_cache_hit_rate": st.hit_rate, "prefix_cache_evictions": st.evictions,
            "preemptions": st.preemptions,
            "tokens_per_s": (sum(n for _, n in window) / span) if span > 0 else 0.0,
            "ttft_p50_s": ttft[len(ttft) // 2] if ttft else None,
            "ttft_recent_s": list(self._ttft)[-16:],
            "step_time_s": (sum(self._step_time) / len(self._step_time)
                            if self._step_time else None),
        }


def _pick_backend(asked: str, m: PagedCausalLM) -> str:
    """The attention backend "auto" stands for on this model's device and dtype; asking
    for the kernel where it cannot run is a ValueError naming why."""
    fits = m.device.type == "cpu" and m.dtype == torch.float32
    if asked == "kernel" and not (fits and cpu_kernel.available()):
        raise ValueError("attention_backend='kernel' needs a float32 model on the CPU and "
                         "a C compiler (cc) to build the kernel; use 'sparse' or 'auto'")
    if asked != "auto":
        return asked
    if m.device.type != "cpu":
        return "gather"
    return "kernel" if fits and cpu_kernel.available() else "sparse"


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def _hold_back(text: str, stops: list[str]) -> str:
    """``text`` without a trailing partial character or a tail that could begin a stop
    string, so nothing handed out is taken back later."""
    text = text.rstrip("\ufffd")
    cut = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), cut, -1):
            if text.endswith(s[:k]):
                cut = k
                break
    return text[:len(text) - cut] if cut else text


__all__ = ["LLMEngine", "RequestOutput", "RUNNING"]
