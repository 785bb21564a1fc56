"""raylite.serve.llm: serve LLMs with OpenAI-compatible endpoints (Ray:
``ray.serve.llm``)::

    from raylite import serve
    from raylite.serve.llm import LLMConfig, build_openai_app

    config = LLMConfig(model_loading_config={"model_id": "gpt", "model_source": path},
                       engine_kwargs={"max_num_seqs": 32})
    serve.run(build_openai_app({"llm_configs": [config]}))
    # POST http://127.0.0.1:8000/v1/chat/completions  (any OpenAI client)

The engine is raylite's own (``raylite.llm``), not vLLM; see README.md ("LLM").
"""

from __future__ import annotations

from raylite.llm._private.openai_protocol import OpenAIError
from raylite.llm._private.serving import (
    LLMConfig,
    LLMServer,
    ModelLoadingConfig,
    OpenAiIngress,
    build_llm_deployment,
    build_openai_app,
)

__all__ = [
    "LLMConfig", "ModelLoadingConfig", "LLMServer", "OpenAiIngress", "build_openai_app",
    "build_llm_deployment", "OpenAIError",
]
