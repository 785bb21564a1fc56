"""Serve LLM over real HTTP with the official ``openai`` client: models, completions,
chat (the HF model's chat template), streaming as server-sent events, usage, logprobs,
OpenAI-shaped errors with the server staying up, and aborting the request of a client
that goes away (streaming or not, with and without an ingress in front)."""

from __future__ import annotations

import json

import httpx
import pytest

pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

from fixtures import send_then_drop  # noqa: E402
from llm_models import make_gpt, make_hf  # noqa: E402

from raylite import serve  # noqa: E402
from raylite.llm import LLMEngine, SamplingParams  # noqa: E402
from raylite.serve.llm import LLMConfig, build_openai_app  # noqa: E402
from raylite.testing import wait_for_condition  # noqa: E402

pytestmark = pytest.mark.timeout(120)
NO_CPU = {"ray_actor_options": {"num_cpus": 0}}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    gpt = str(tmp_path_factory.mktemp("gpt"))
    make_gpt(gpt)
    llama = str(tmp_path_factory.mktemp("llama"))
    make_hf(llama, "llama")
    return {"gpt": gpt, "llama": llama}


@pytest.fixture(scope="module")
def llm_url(serve_url, dirs):
    app = build_openai_app({"llm_configs": [
        LLMConfig(model_loading_config={"model_id": m, "model_source": d},
                  deployment_config=NO_CPU) for m, d in dirs.items()]})
    serve.run(app, name="llm", route_prefix="/")
    yield serve_url
    serve.delete("llm")


@pytest.fixture(scope="module")
def client(llm_url):
    return openai.OpenAI(base_url=f"{llm_url}/v1", api_key="unused", max_retries=0,
                         timeout=30)


def offline(path, prompt, **kw):
    return LLMEngine(path).generate([prompt], SamplingParams(**kw))[0]


def test_models_are_listed(client, llm_url):
    assert sorted(m.id for m in client.models.list()) == ["gpt", "llama"]
    r = httpx.get(f"{llm_url}/v1/models/gpt", timeout=10)
    assert r.status_code == 200 and r.json()["id"] == "gpt"


def test_completion_equals_the_engine_offline(client, dirs):
    r = client.completions.create(model="gpt", prompt="Hello", max_tokens=12,
                                  temperature=0)
    ref = offline(dirs["gpt"], "Hello", max_tokens=12, temperature=0)
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == "length"
    assert r.object == "text_completion" and r.model == "gpt"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == \
        (5, 12, 17)


def test_chat_uses_the_models_chat_template(client, dirs):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="llama", messages=msgs, max_tokens=8,
                                       temperature=0, logprobs=True, top_logprobs=2)
    eng = LLMEngine(dirs["llama"])
    prompt = eng.tokenizer.apply_chat_template(msgs)
    assert prompt == "<|system|>Be brief.\n<|user|>hi\n<|assistant|>"
    ref = eng.generate([prompt], SamplingParams(max_tokens=8, temperature=0))[0]
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content == ref.text
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert len(c.logprobs.content) == len(ref.token_ids) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 for t in c.logprobs.content)


def test_streaming_pieces_add_up_with_usage_last(client):
    kw = dict(model="gpt", prompt="Once", max_tokens=40, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True,
                                            stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens == 40 and not chunks[-1].choices
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "length" and set(finals[:-1]) <= {None}


def test_chat_stream_starts_with_the_role(client):
    stream = client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "x"}], max_tokens=6,
        temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_raw_server_sent_events_end_with_done(llm_url):
    body = {"model": "gpt", "prompt": "ab", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{llm_url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_errors_are_openai_shaped_and_the_server_stays_up(client, llm_url):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="gpt", prompt="x", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        list(client.completions.create(model="gpt", prompt="x", max_tokens=0, stream=True))
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="gpt", messages=[{"role": "user",
                                                                "content": "x"}], n=2)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="gpt", prompt="x" * 1000)
    r = httpx.post(f"{llm_url}/v1/completions", content=b"{oops", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    r = httpx.post(f"{llm_url}/v1/nothing", json={}, timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    # two models and no name: which one is not guessed
    r = httpx.post(f"{llm_url}/v1/completions", json={"prompt": "x"}, timeout=10)
    assert r.status_code == 404
    assert client.completions.create(model="gpt", prompt="x", max_tokens=2).usage


def test_one_model_is_picked_when_none_is_named(serve_url, dirs):
    app = build_openai_app({"llm_configs": [LLMConfig(
        model_loading_config={"model_id": "solo", "model_source": dirs["gpt"]},
        deployment_config=NO_CPU)]})
    serve.run(app, name="solo", route_prefix="/solo")
    try:
        r = httpx.post(f"{serve_url}/solo/v1/completions",
                       json={"prompt": "hi", "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "solo"
    finally:
        serve.delete("solo")


def test_an_abandoned_stream_is_aborted(llm_url):
    server = serve.get_deployment_handle("LLMServer_gpt", "llm")
    before = server.stats.remote().result()["aborted"]
    gen = server.options(stream=True).stream.remote(
        {"prompt": "x", "max_tokens": 5000 // 20, "ignore_eos": True}, False)
    next(iter(gen))  # the stream is running
    gen.cancel()
    wait_for_condition(lambda: server.stats.remote().result()["aborted"] == before + 1,
                       timeout=20)
    assert server.stats.remote().result()["running"] == 0


@pytest.fixture(scope="module")
def long_apps(serve_url, dirs, tmp_path_factory):
    """A model with a 4,096-token context (a request of 4,000 tokens runs for seconds),
    served alone ("direct": its LLMServer answers HTTP) and behind an OpenAiIngress with
    a second model ("behind": the ingress streams from it through a handle)."""
    path = str(tmp_path_factory.mktemp("long"))
    make_gpt(path, block_size=4096)

    def cfg(model_id, source):
        return LLMConfig(model_loading_config={"model_id": model_id, "model_source": source},
                         deployment_config=NO_CPU)
    serve.run(build_openai_app({"llm_configs": [cfg("long", path)]}), name="direct",
              route_prefix="/direct")
    serve.run(build_openai_app({"llm_configs": [cfg("long", path), cfg("gpt", dirs["gpt"])]}),
              name="behind", route_prefix="/behind")
    yield
    serve.delete("direct")
    serve.delete("behind")


def _post(path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


@pytest.mark.parametrize("app", ["direct", "behind"])
def test_a_client_that_disconnects_aborts_its_request(serve_url, long_apps, app):
    server = serve.get_deployment_handle("LLMServer_long", app)

    def stats():
        return server.stats.remote().result(timeout_s=10)

    def all_freed(aborted):
        s = stats()
        return s["aborted"] == aborted and s["running"] == s["waiting"] == 0 and \
            s["kv_blocks_used"] == 0

    before = stats()
    body = {"model": "long", "prompt": "x", "max_tokens": 4000, "ignore_eos": True}
    url = f"/{app}/v1/completions"
    # streaming: read a few events, hang up
    got = send_then_drop(serve_url, _post(url, {**body, "stream": True}), b"data: {",
                         count=3)
    assert got.startswith(b"HTTP/1.1 200")
    wait_for_condition(lambda: all_freed(before["aborted"] + 1), timeout=20)
    # not streaming: hang up while the engine runs the request
    send_then_drop(serve_url, _post(url, body), before_close=lambda: wait_for_condition(
        lambda: stats()["running"] == 1, timeout=20))
    wait_for_condition(lambda: all_freed(before["aborted"] + 2), timeout=20)
    assert stats()["finished"] == before["finished"]  # neither ran to its end
    r = httpx.post(f"{serve_url}{url}", json={"model": "long", "prompt": "hi",
                                             "max_tokens": 3}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_llm_config_checks_its_options():
    with pytest.raises(ValueError, match="unknown engine_kwargs"):
        LLMConfig(model_loading_config={"model_id": "m"}, engine_kwargs={"bogus": 1})
    with pytest.raises(ValueError, match="bundles"):
        LLMConfig(model_loading_config={"model_id": "m"}, placement_group_config={})
    with pytest.raises(ValueError, match="unique"):
        build_openai_app({"llm_configs": [{"model_loading_config": {"model_id": "a"}}] * 2})


def test_engine_threads_follow_the_replicas_cpus(monkeypatch):
    """Ray's OMP_NUM_THREADS rule: the CPUs the replica reserved, at least one, unless
    OMP_NUM_THREADS is set (torch's default would put a thread on every core)."""
    from raylite.llm._private.serving import engine_threads

    def config(**actor):
        return LLMConfig(model_loading_config={"model_id": "m"},
                         deployment_config={"ray_actor_options": actor} if actor else {})

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert engine_threads(config()) == 1  # the LLMServer's default: one CPU
    assert engine_threads(config(num_cpus=0)) == 1
    assert engine_threads(config(num_cpus=3)) == 3
    assert engine_threads(LLMConfig(model_loading_config={"model_id": "m"},
                                    placement_group_config={"bundles": [{"CPU": 2}]})) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert engine_threads(config(num_cpus=1)) == 4
