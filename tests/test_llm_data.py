"""Batch inference over raylite.data: outputs equal the engine's own, columns and
counts, pre/postprocess, and rows that fail (continue with the error, or stop)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from llm_models import make_gpt  # noqa: E402

import raylite  # noqa: E402
from raylite import data  # noqa: E402
from raylite.data.llm import ProcessorConfig, build_processor  # noqa: E402
from raylite.llm import LLMEngine, SamplingParams  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gpt"))
    make_gpt(path)
    return path


def test_batch_inference_adds_the_generated_columns(shared_cluster, gpt):
    questions = [f"q{i}" for i in range(10)]
    processor = build_processor(
        ProcessorConfig(model_source=gpt, batch_size=4, concurrency=1),
        preprocess=lambda row: {"id": row["id"], "prompt": row["q"],
                                "sampling_params": {"max_tokens": 5 + row["id"] % 3,
                                                    "temperature": 0}},
        postprocess=lambda row: {"id": row["id"], "answer": row["generated_text"],
                                 "n_out": row["num_generated_tokens"],
                                 "n_in": row["num_input_tokens"]})
    ds = data.from_items([{"id": i, "q": q} for i, q in enumerate(questions)])
    rows = sorted(processor(ds).take_all(), key=lambda r: r["id"])
    eng = LLMEngine(gpt)
    for r, q in zip(rows, questions, strict=True):
        ref = eng.generate([q], SamplingParams(max_tokens=5 + r["id"] % 3,
                                               temperature=0))[0]
        assert r["answer"] == ref.text
        assert (r["n_out"], r["n_in"]) == (len(ref.token_ids), len(q))


def test_chat_rows_and_default_columns(shared_cluster, gpt):
    processor = build_processor(ProcessorConfig(model_source=gpt, batch_size=32))
    ds = data.from_items([{"messages": [{"role": "user", "content": "hi"}],
                           "sampling_params": {"max_tokens": 3}}] * 3)
    rows = processor(ds).take_all()
    assert len(rows) == 3
    for r in rows:
        assert isinstance(r["generated_text"], str) and r["num_generated_tokens"] <= 3
        assert r["num_input_tokens"] == len("user: hi\nassistant:")
        assert r["finish_reason"] in ("length", "stop")


def test_failing_rows_continue_with_their_error(shared_cluster, gpt):
    processor = build_processor(ProcessorConfig(model_source=gpt, batch_size=8,
                                                should_continue_on_error=True))
    ds = data.from_items([{"prompt": "ok", "sampling_params": {"max_tokens": 2}},
                          {"prompt": "bad", "sampling_params": {"max_tokens": 0}},
                          {"prompt": "x" * 5000}])
    rows = processor(ds).take_all()
    assert rows[0]["__inference_error__"] is None and rows[0]["num_generated_tokens"] == 2
    assert "max_tokens" in rows[1]["__inference_error__"]
    assert "context" in rows[2]["__inference_error__"]
    assert rows[1]["generated_text"] is None


def test_a_failing_row_stops_the_job_with_its_error(shared_cluster, gpt):
    processor = build_processor(ProcessorConfig(model_source=gpt))
    ds = data.from_items([{"prompt": "ok"}, {"nothing": 1}])
    with pytest.raises(raylite.exceptions.RayTaskError, match="needs a 'prompt'"):
        processor(ds).take_all()


def test_processor_config_checks():
    with pytest.raises(ValueError, match="model_source"):
        ProcessorConfig()
    with pytest.raises(ValueError, match="unknown engine_kwargs"):
        ProcessorConfig(model_source="x", engine_kwargs={"nope": 1})
