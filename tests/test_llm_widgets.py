"""LLMView: rendering from stats, a live view of a local engine, and of a Serve LLM
application's engines (read through their stats method)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from llm_models import make_gpt  # noqa: E402

from raylite import serve  # noqa: E402
from raylite.llm import LLMEngine, SamplingParams  # noqa: E402
from raylite.serve.llm import LLMConfig, build_openai_app  # noqa: E402
from raylite.testing import wait_for_condition  # noqa: E402
from raylite.widgets import LLMView  # noqa: E402
from raylite.widgets import render_llm as RL  # noqa: E402

pytestmark = pytest.mark.timeout(90)

STATS = {"tokens_per_s": 812.4, "running": 5, "waiting": 2, "kv_blocks_used": 30,
         "kv_blocks_total": 64, "kv_blocks_cached": 4, "prefix_cache_hit_rate": 0.5,
         "ttft_p50_s": 0.012, "preemptions": 3, "generated_tokens": 1000}


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gpt"))
    make_gpt(path)
    return path


def test_rendering_shows_the_numbers_and_marks_preemptions():
    samples = [RL.sample({"m": dict(STATS, preemptions=1, kv_blocks_used=10)}, 100.0),
               RL.sample({"m": STATS}, 101.0)]
    html = RL.llm_html({"m": STATS}, samples, now=101.0)
    for text in ("812</b> tokens/s", "5 running", "2 waiting", "prefix hits 50%",
                 "TTFT p50 12 ms", "3 preempted", "30/64 blocks (4 cached)"):
        assert text in html
    assert 'data-peak-kv="30"' in html and html.count('class="raylite-preempt"') == 1
    assert "no engines" in RL.llm_text({}) and "812 tokens/s" in RL.llm_text({"m": STATS})
    assert "no engine found" in RL.llm_header({})


def test_given_stats_are_drawn_without_a_cluster():
    view = LLMView({"m": STATS})
    assert not view.live and "812" in view.html() and view.history()[0]["running"] == 5


def test_a_local_engine(gpt):
    eng = LLMEngine(gpt, num_kv_blocks=16, block_size=4)
    eng.generate([[1, 2, 3]] * 4, SamplingParams(max_tokens=20, ignore_eos=True))
    view = LLMView(eng)
    rec = view.history()[-1]
    assert rec["model"] == "engine" and rec["generated"] == 80 and rec["kv_total"] == 16
    assert rec["preemptions"] > 0 and "engine" in view.html()
    assert "engine: " in repr(view)


def test_a_serve_llm_application(serve_url, gpt):
    app = build_openai_app({"llm_configs": [LLMConfig(
        model_loading_config={"model_id": "gpt", "model_source": gpt},
        deployment_config={"ray_actor_options": {"num_cpus": 0}})]})
    serve.run(app, name="llmview", route_prefix="/v")
    try:
        h = serve.get_deployment_handle("LLMServer_gpt", "llmview")
        h.generate.remote({"prompt": "hello", "max_tokens": 7}).result(timeout_s=30)
        view = LLMView(app="llmview", live=False)
        wait_for_condition(lambda: (view.refresh() or view.models.get("gpt", {}))
                           .get("generated_tokens") == 7, timeout=20)
        assert 'data-model="gpt"' in view.html()
        view.close()
    finally:
        serve.delete("llmview")
