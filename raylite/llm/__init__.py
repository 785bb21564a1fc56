"""raylite.llm: a continuous-batching LLM engine with a paged KV cache, in torch.

::

    from raylite.llm import LLMEngine, SamplingParams
    engine = LLMEngine("path/to/model")            # raylite GPT, HF GPT-2 or Llama
    out = engine.generate(["Hello"], SamplingParams(max_tokens=20, temperature=0))[0]

Serving it over an OpenAI-compatible API is ``raylite.serve.llm`` (Ray:
``ray.serve.llm``); batch inference over a dataset is ``raylite.data.llm``. Ray LLM runs
vLLM; raylite runs its own small engine with vLLM's ideas (iteration-level scheduling
under a token budget, chunked prefill, paged KV blocks with preemption by recompute,
prefix caching) and vLLM's names where it has them. See README.md ("LLM").
"""

from __future__ import annotations

from raylite.llm._private.async_engine import AsyncLLMEngine
from raylite.llm._private.cloud import (
    AzureFileSystem,
    CloudFileSystem,
    GCSFileSystem,
    S3FileSystem,
    download_model,
    get_filesystem,
)
from raylite.llm._private.config import EngineConfig
from raylite.llm._private.engine import LLMEngine, RequestOutput
from raylite.llm._private.gpt import GPT, GPTConfig
from raylite.llm._private.models import PagedCausalLM
from raylite.llm._private.sampling import SamplingParams
from raylite.llm._private.tokenizer import ByteTokenizer

__all__ = [
    "LLMEngine", "AsyncLLMEngine", "EngineConfig", "SamplingParams", "RequestOutput",
    "GPT", "GPTConfig", "ByteTokenizer", "PagedCausalLM", "CloudFileSystem",
    "S3FileSystem", "GCSFileSystem", "AzureFileSystem", "get_filesystem", "download_model",
]
