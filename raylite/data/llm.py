"""raylite.data.llm: batch inference over a ``raylite.data`` Dataset (Ray:
``ray.data.llm``)::

    from raylite import data
    from raylite.data.llm import ProcessorConfig, build_processor

    processor = build_processor(
        ProcessorConfig(model_source=path, batch_size=32, concurrency=1),
        preprocess=lambda row: {"prompt": row["question"],
                                "sampling_params": {"max_tokens": 20, "temperature": 0}},
        postprocess=lambda row: {"answer": row["generated_text"]})
    processor(data.from_items([{"question": "..."}])).take_all()

Each of ``concurrency`` actors holds one engine and runs a whole batch at once through
it (continuous batching inside the batch). A row that fails gets its error in the
``__inference_error__`` column when ``should_continue_on_error=True``; else the job stops
with the row's error (it never hangs). Differs from Ray: raylite's engine instead of
vLLM, one stage (no separate tokenize/detokenize stages), no HTTP-request processor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ERROR_COLUMN = "__inference_error__"


@dataclass
class ProcessorConfig:
    """``model_source`` (local directory or cloud URI), ``engine_kwargs`` (raylite
    engine options), ``batch_size`` rows per engine call, ``concurrency`` engine
    actors, ``num_cpus``/``num_gpus`` per actor, ``should_continue_on_error``,
    ``apply_chat_template`` (rows with ``messages`` always use it; rows with ``prompt``
    are raw text), ``tokenizer_source``."""

    model_source: str = ""
    engine_kwargs: dict = field(default_factory=dict)
    batch_size: int = 32
    concurrency: int = 1
    num_cpus: float = 1
    num_gpus: float = 0
    should_continue_on_error: bool = False
    tokenizer_source: str | None = None
    apply_chat_template: bool = True

    def __post_init__(self):
        from raylite.llm import EngineConfig

        if not self.model_source:
            raise ValueError("ProcessorConfig needs a model_source")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError("batch_size must be a positive int")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError("concurrency must be a positive int")
        EngineConfig.from_kwargs(self.engine_kwargs)


# Ray's name for the vLLM-backed config; here it is the same class.
vLLMEngineProcessorConfig = ProcessorConfig


class Processor:
    """``processor(dataset) -> dataset`` with the generated columns added."""

    def __init__(self, config: ProcessorConfig, preprocess=None, postprocess=None):
        self.config, self.preprocess, self.postprocess = config, preprocess, postprocess

    def __call__(self, ds):
        cfg = self.config
        if self.preprocess is not None:
            ds = ds.map(_keep_row(self.preprocess))
        ds = ds.map_batches(_EngineStage, batch_size=cfg.batch_size,
                            fn_constructor_args=(cfg,), concurrency=cfg.concurrency,
                            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus or None)
        if self.postprocess is not None:
            ds = ds.map(self.postprocess)
        return ds


def build_processor(config: ProcessorConfig, preprocess=None, postprocess=None
                    ) -> Processor:
    """A processor for ``config``. ``preprocess(row) -> dict`` gives each row's
    ``prompt`` (text or token ids) or ``messages``, and optionally ``sampling_params``
    (a dict of SamplingParams fields); ``postprocess(row) -> dict`` shapes the output
    row, which has ``generated_text``, ``generated_tokens``, ``num_generated_tokens``,
    ``num_input_tokens`` and ``finish_reason``."""
    return Processor(config, preprocess, postprocess)


def _keep_row(fn):
    def apply(row):
        out = fn(row)
        if not isinstance(out, dict):
            raise TypeError(f"preprocess must return a dict, got {type(out).__name__}")
        return out
    return apply


def _obj(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


class _EngineStage:
    """One actor's engine; ``__call__`` runs one batch."""

    def __init__(self, config: ProcessorConfig):
        from raylite.llm import LLMEngine

        self.config = config
        self.engine = LLMEngine(config.model_source, config.tokenizer_source,
                                **config.engine_kwargs)

    def _request(self, row: dict):
        from raylite.llm import SamplingParams

        sp = row.get("sampling_params") or {}
        if not isinstance(sp, dict):
            raise TypeError("sampling_params must be a dict")
        params = SamplingParams(**sp)
        if row.get("messages") is not None:
            msgs = list(row["messages"])
            prompt = (self.engine.tokenizer.apply_chat_template(msgs)
                      if self.config.apply_chat_template
                      else "\n".join(str(m.get("content", "")) for m in msgs))
        elif row.get("prompt") is not None:
            prompt = row["prompt"]
            if isinstance(prompt, np.ndarray):
                prompt = prompt.tolist()
        else:
            raise ValueError("each row needs a 'prompt' or 'messages' column")
        return prompt, params

    def __call__(self, batch: dict) -> dict:
        n = len(next(iter(batch.values()))) if batch else 0
        rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]
        errors: list[str | None] = [None] * n
        rids: dict[int, str] = {}
        eng = self.engine
        for i, row in enumerate(rows):
            try:
                prompt, params = self._request(row)
                rids[i] = eng.add_request(None, prompt, params)
            except Exception as e:  # noqa: BLE001 - the row's own error
                if not self.config.should_continue_on_error:
                    for rid in rids.values():
                        eng.abort_request(rid)
                    raise ValueError(f"row {i} of the batch failed: {type(e).__name__}: "
                                     f"{e}") from e
                errors[i] = f"{type(e).__name__}: {e}"
        done = {}
        while len(done) < len(rids):
            for out in eng.step():
                if out.finished:
                    done[out.request_id] = out
        outs = [done.get(rids[i]) if i in rids else None for i in range(n)]
        result = dict(batch)
        result["generated_text"] = _obj([o.text if o else None for o in outs])
        result["generated_tokens"] = _obj([list(o.token_ids) if o else [] for o in outs])
        result["num_generated_tokens"] = np.array([len(o.token_ids) if o else 0
                                                   for o in outs])
        result["num_input_tokens"] = np.array([len(o.prompt_token_ids) if o else 0
                                               for o in outs])
        result["finish_reason"] = _obj([o.finish_reason if o else None for o in outs])
        if self.config.should_continue_on_error:
            result[ERROR_COLUMN] = _obj(errors)
        return result


__all__ = ["ProcessorConfig", "vLLMEngineProcessorConfig", "Processor", "build_processor"]
