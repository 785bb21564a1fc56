"""Serve LLM: the engine behind Serve with OpenAI-compatible endpoints (Ray's
``ray.serve.llm``: ``LLMConfig``, ``LLMServer``, ``OpenAiIngress``,
``build_openai_app``).

An application is one ``OpenAiIngress`` deployment (HTTP: routes ``/v1/...``, picks the
model) holding a handle to one ``LLMServer`` deployment per model (each replica runs an
``AsyncLLMEngine``); with a single model the LLMServer answers HTTP itself, one hop less
per streamed token than Ray's layout. Streams are server-sent events produced by the
LLMServer as the engine makes tokens; the ingress forwards them as they come, so
streaming adds no batching delay of its own. When several events are ready at once
they travel as one message (fewer hops under load, never a wait).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field

from raylite.llm._private.openai_protocol import (
    OpenAIError,
    bad,
    chat_messages,
    completion_prompt,
    full_response,
    logprobs_block,
    new_id,
    sampling_params,
    sse,
    stream_chunk,
    usage,
)

log = logging.getLogger(__name__)

PER_WORKER_GPUS_ENV = "RAYLITE_LLM_PER_WORKER_GPUS"


@dataclass
class ModelLoadingConfig:
    """``model_id`` (the name clients ask for), ``model_source`` (a local directory or
    a cloud URI; default: ``model_id``), ``tokenizer_source`` (default: the model's)."""

    model_id: str
    model_source: str | None = None
    tokenizer_source: str | None = None

    def __post_init__(self):
        if not self.model_id or not isinstance(self.model_id, str):
            raise ValueError("model_loading_config needs a model_id")
        self.model_source = self.model_source or self.model_id


@dataclass
class LLMConfig:
    """One served model. ``engine_kwargs`` are raylite engine options (``EngineConfig``;
    unknown keys raise at once, not in the replica); ``deployment_config`` is the
    LLMServer deployment's Serve options (``num_replicas``, ``autoscaling_config``,
    ``max_ongoing_requests``, ``ray_actor_options``, ...); ``placement_group_config``
    ``{"bundles": [...], "strategy": "PACK"}`` places each replica (and its tensor-
    parallel workers) in a placement group. Differs from Ray: the engine is raylite's,
    not vLLM (``llm_engine`` is accepted only as "raylite"), and ``accelerator_type``
    becomes a resource request ``accelerator_type:<type>`` as in Ray Core."""

    model_loading_config: ModelLoadingConfig | dict
    engine_kwargs: dict = field(default_factory=dict)
    deployment_config: dict = field(default_factory=dict)
    accelerator_type: str | None = None
    placement_group_config: dict | None = None
    runtime_env: dict | None = None
    llm_engine: str = "raylite"

    def __post_init__(self):
        from raylite.llm._private.config import EngineConfig

        if isinstance(self.model_loading_config, dict):
            self.model_loading_config = ModelLoadingConfig(**self.model_loading_config)
        if self.llm_engine not in ("raylite", "vLLM"):
            raise ValueError(f"unknown llm_engine {self.llm_engine!r}")
        EngineConfig.from_kwargs(self.engine_kwargs)  # fail early on unknown keys
        pg = self.placement_group_config
        if pg is not None:
            if not isinstance(pg, dict) or not pg.get("bundles"):
                raise ValueError("placement_group_config needs a non-empty 'bundles' list")
            unknown = set(pg) - {"bundles", "strategy"}
            if unknown:
                raise ValueError(f"unknown placement_group_config keys {sorted(unknown)}")

    @property
    def model_id(self) -> str:
        return self.model_loading_config.model_id

    def per_worker_gpus(self) -> float | None:
        """The engine workers' GPU share (the seed's VLLM_RAY_PER_WORKER_GPUS): set by
        the user in ``runtime_env.env_vars``, else taken from the first GPU bundle of
        the placement group when it asks for a fraction (0 < GPU < 1), else None."""
        env = (self.runtime_env or {}).get("env_vars") or {}
        if PER_WORKER_GPUS_ENV in env:
            return float(env[PER_WORKER_GPUS_ENV])
        for b in (self.placement_group_config or {}).get("bundles", []):
            g = b.get("GPU", 0)
            if g:
                return float(g) if 0 < g < 1 else None
        return None

    def deployment_options(self) -> dict:
        """The LLMServer deployment's options from this config."""
        opts = dict(self.deployment_config or {})
        actor = dict(opts.pop("ray_actor_options", None) or {})
        env = dict((self.runtime_env or {}).get("env_vars") or {})
        share = self.per_worker_gpus()
        if share is not None:
            env.setdefault(PER_WORKER_GPUS_ENV, str(share))
        if self.runtime_env or env:
            actor["runtime_env"] = {**(self.runtime_env or {}), "env_vars": env}
        pg = self.placement_group_config
        if pg is not None:
            opts["placement_group_bundles"] = pg["bundles"]
            opts["placement_group_strategy"] = pg.get("strategy", "PACK")
            first = pg["bundles"][0]
            actor.setdefault("num_cpus", first.get("CPU", 0))
            if first.get("GPU"):
                actor.setdefault("num_gpus", first["GPU"])
        if self.accelerator_type:
            actor.setdefault("accelerator_type", self.accelerator_type)
        actor.setdefault("num_cpus", 1)
        opts["ray_actor_options"] = actor
        opts.setdefault("max_ongoing_requests", 256)
        opts.setdefault("name", "LLMServer_" + re.sub(r"[^A-Za-z0-9_.-]", "_",
                                                       self.model_id))
        return opts


def engine_threads(config: LLMConfig) -> int:
    """torch's intra-op threads for a replica's engine: the CPUs the replica reserved
    (``ray_actor_options["num_cpus"]``, default 1), at least 1, unless OMP_NUM_THREADS
    says otherwise. Ray's rule for OMP_NUM_THREADS in its workers, applied here: with
    torch's default (a thread per core) the engine's threads spin against the HTTP
    proxy, the replica's streaming and other work for the same cores, and one thread
    that loses its core stalls the others (the engine alone on this 2-core machine while
    the test suite ran: 1 thread 775-876 tokens/s, 2 threads 98-1,164)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = config.deployment_options()["ray_actor_options"].get("num_cpus", 1)
    return max(1, int(cpus or 0))


class LLMServer:
    """One replica's engine, answering OpenAI-shaped requests for one model. Its engine
    runs ``engine_threads(config)`` torch threads unless ``engine_kwargs`` set
    ``num_threads`` (vLLM on Ray gets OMP_NUM_THREADS from Ray's rule alike)."""

    def __init__(self, llm_config: LLMConfig):
        from raylite.llm._private.async_engine import AsyncLLMEngine
        from raylite.llm._private.engine import LLMEngine

        self.config = llm_config
        mlc = llm_config.model_loading_config
        kwargs = dict(llm_config.engine_kwargs)
        self.per_worker_gpus = llm_config.per_worker_gpus()
        if self.per_worker_gpus is None and os.environ.get(PER_WORKER_GPUS_ENV):
            self.per_worker_gpus = float(os.environ[PER_WORKER_GPUS_ENV])
        if self.per_worker_gpus is not None and kwargs.get("tensor_parallel_size", 1) > 1:
            kwargs.setdefault("tp_worker_num_gpus", self.per_worker_gpus)
        kwargs.setdefault("num_threads", engine_threads(llm_config))
        self.engine = AsyncLLMEngine(LLMEngine(mlc.model_source, mlc.tokenizer_source,
                                               **kwargs))
        self.created = int(time.time())

    def model_card(self) -> dict:
        return {"id": self.config.model_id, "object": "model", "created": self.created,
                "owned_by": "raylite", "root": self.config.model_loading_config.model_source,
                "max_model_len": self.engine.engine.max_model_len}

    def stats(self) -> dict:
        """The engine's counters (``LLMEngine.stats``), for views and autoscaling."""
        return {"model_id": self.config.model_id, **self.engine.stats()}

    def check_health(self) -> None:
        if not self.engine._thread.is_alive():
            raise RuntimeError("the engine thread died")

    def _prepare(self, body: dict, chat: bool):
        params = sampling_params(body, chat=chat)
        if chat:
            prompt = self.engine.tokenizer.apply_chat_template(chat_messages(body))
        else:
            prompt = completion_prompt(body)
        return prompt, params

    def _submit(self, prompt, params):
        try:
            return self.engine.add_request(None, prompt, params)
        except ValueError as e:
            raise bad(str(e)) from None

    async def generate(self, body: dict, chat: bool = False) -> dict:
        """A whole (non-streaming) completion or chat completion."""
        prompt, params = self._prepare(body, chat)
        rid, q = self._submit(prompt, params)
        last = None
        try:
            while last is None or not last.finished:
                item = await q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                last = item
        finally:
            if last is None or not last.finished:
                self.engine.abort(rid)
        return full_response(new_id(chat), self.config.model_id, last,
                             self.engine.tokenizer, chat=chat)

    async def stream(self, body: dict, chat: bool = False):
        """Server-sent events of a completion as the engine produces it; a request that
        is wrong raises OpenAIError before the first event."""
        prompt, params = self._prepare(body, chat)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        rid, q = self._submit(prompt, params)
        sid, model, created = new_id(chat), self.config.model_id, int(time.time())
        tok = self.engine.tokenizer
        last = None
        try:
            head = sse(stream_chunk(sid, model, created, chat=True, text=None, role=True)
                       ) if chat else ""
            while last is None or not last.finished:
                items = [await q.get()]
                while not q.empty():  # whatever else is ready goes in the same message
                    items.append(q.get_nowait())
                events = [head]
                head = ""
                for item in items:
                    if item is None:
                        raise RuntimeError("the request was aborted")
                    if isinstance(item, BaseException):
                        raise item
                    last = item
                    lp = logprobs_block(tok, item.delta_token_ids, item.delta_logprobs,
                                        chat=chat)
                    if item.delta_token_ids or item.finished:  # one event a token
                        events.append(sse(stream_chunk(
                            sid, model, created, chat=chat, text=item.delta_text,
                            finish_reason=item.finish_reason if item.finished else None,
                            logprobs=lp)))
                if last.finished:
                    if include_usage:
                        events.append(sse({
                            "id": sid, "created": created, "model": model, "choices": [],
                            "object": "chat.completion.chunk" if chat else
                            "text_completion",
                            "usage": usage(len(last.prompt_token_ids),
                                           len(last.token_ids))}))
                    events.append(sse("[DONE]"))
                yield "".join(events)
        finally:
            if last is None or not last.finished:
                self.engine.abort(rid)  # the client went away, or the stream was closed

    async def __call__(self, request):
        """HTTP for this model alone (the app's ingress when it serves one model)."""
        return await serve_openai_http(request, {self.config.model_id: self})

    def __del__(self):
        eng = getattr(self, "engine", None)
        if eng is not None:
            eng.shutdown()


class _RemoteServer:
    """An LLMServer behind a handle, as the HTTP code calls it."""

    def __init__(self, handle):
        self._h = handle

    async def generate(self, body: dict, chat: bool) -> dict:
        return await self._h.generate.remote(body, chat)

    def stream(self, body: dict, chat: bool):
        return self._h.options(stream=True).stream.remote(body, chat)

    async def model_card(self) -> dict:
        return await self._h.model_card.remote()


async def _card(server) -> dict:
    card = server.model_card()
    return await card if hasattr(card, "__await__") else card


async def serve_openai_http(request, servers: dict):
    """Answer one OpenAI API request; ``servers`` maps model ids to objects with
    ``generate(body, chat)`` (awaitable), ``stream(body, chat)`` (async iterator of SSE
    text) and ``model_card()``. Every error is an OpenAI-shaped JSON answer."""
    from starlette.responses import JSONResponse, StreamingResponse

    path = request.url.path[len(request.scope.get("root_path", "")):] or "/"
    path = path.rstrip("/") or "/"
    try:
        if request.method == "GET" and path == "/v1/models":
            return JSONResponse({"object": "list",
                                 "data": [await _card(s) for s in servers.values()]})
        if request.method == "GET" and path.startswith("/v1/models/"):
            want = path[len("/v1/models/"):]
            if want not in servers:
                raise OpenAIError(404, f"The model {want!r} does not exist.",
                                  "NotFoundError", "model")
            return JSONResponse(await _card(servers[want]))
        routes = {"/v1/completions": False, "/v1/chat/completions": True}
        if path not in routes:
            raise OpenAIError(404, f"No route {request.method} {path}", "NotFoundError")
        if request.method != "POST":
            raise OpenAIError(405, f"{path} takes POST", "MethodNotAllowed")
        chat = routes[path]
        try:
            body = await request.json()
        except ValueError:
            raise bad("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object")
        server = _pick(servers, body)
        if not body.get("stream"):
            return JSONResponse(await server.generate(body, chat))
        gen = server.stream(body, chat)
        first = await gen.__anext__()  # errors in the request surface here, as JSON

        async def events():
            yield first
            async for chunk in gen:
                yield chunk
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})
    except Exception as e:  # noqa: BLE001 - every error is an OpenAI-shaped answer
        err = as_openai_error(e)
        return JSONResponse(err.to_dict(), status_code=err.status)


def _pick(servers: dict, body: dict):
    name = body.get("model")
    if name is None and len(servers) == 1:
        return next(iter(servers.values()))
    if name not in servers:
        raise OpenAIError(404, f"The model {name!r} does not exist. Served models: "
                          f"{sorted(servers)}", "NotFoundError", "model")
    return servers[name]


class OpenAiIngress:
    """The HTTP side for several models: ``GET /v1/models``, ``POST /v1/completions``,
    ``POST /v1/chat/completions``; picks the LLMServer by the body's ``model``; errors
    are OpenAI-shaped JSON. (With one model, build_openai_app lets the LLMServer answer
    HTTP itself: one hop less per token.)"""

    def __init__(self, llm_deployments: list, model_ids: list[str]):
        self._servers = {m: _RemoteServer(h) for m, h in
                         zip(model_ids, llm_deployments, strict=True)}

    async def __call__(self, request):
        return await serve_openai_http(request, self._servers)


def as_openai_error(e: BaseException) -> OpenAIError:
    if isinstance(e, OpenAIError) and hasattr(e, "status"):
        return e
    for arg in (e, getattr(e, "cause", None), getattr(e, "__cause__", None)):
        if isinstance(arg, OpenAIError) and hasattr(arg, "status"):
            return arg
    if isinstance(e, OpenAIError) and len(e.args) >= 2:
        return OpenAIError(*e.args[:4])
    log.exception("request failed")
    return OpenAIError(500, f"{type(e).__name__}: {e}", "InternalServerError")


def build_llm_deployment(llm_config: LLMConfig | dict, *, name_prefix: str = ""):
    """The LLMServer application for one model."""
    from raylite import serve

    cfg = llm_config if isinstance(llm_config, LLMConfig) else LLMConfig(**llm_config)
    opts = cfg.deployment_options()
    opts["name"] = name_prefix + opts["name"]
    return serve.deployment(LLMServer).options(**opts).bind(cfg)


def build_openai_app(builder_config: dict):
    """An application serving every model of ``{"llm_configs": [...]}`` (LLMConfig
    objects or dicts) behind one OpenAI-compatible ingress; ``serve.run`` it. Differs
    from Ray: one model (and no ``ingress_deployment_config``) is served by its
    LLMServer alone, with no separate ingress; no LoRA."""
    from raylite import serve

    if isinstance(builder_config, dict):
        configs = builder_config.get("llm_configs")
        unknown = set(builder_config) - {"llm_configs", "ingress_deployment_config"}
        if unknown:
            raise ValueError(f"unknown build_openai_app keys {sorted(unknown)}")
        ingress_opts = dict(builder_config.get("ingress_deployment_config") or {})
    else:
        configs, ingress_opts = builder_config, {}
    if not configs:
        raise ValueError("build_openai_app needs at least one llm_config")
    configs = [c if isinstance(c, LLMConfig) else LLMConfig(**c) for c in configs]
    ids = [c.model_id for c in configs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"model ids must be unique, got {ids}")
    if len(configs) == 1 and not ingress_opts:
        # one model: its LLMServer answers HTTP itself (Ray puts an ingress in front,
        # which costs a hop per streamed token)
        return build_llm_deployment(configs[0])
    servers = [build_llm_deployment(c) for c in configs]
    ingress_opts.setdefault("max_ongoing_requests", 1024)
    actor = dict(ingress_opts.pop("ray_actor_options", None) or {})
    actor.setdefault("num_cpus", 0)
    ingress = serve.deployment(OpenAiIngress).options(
        name="OpenAiIngress", ray_actor_options=actor, **ingress_opts)
    return ingress.bind(servers, ids)
