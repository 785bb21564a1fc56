"""Placement: tensor parallelism of raylite's GPT over two worker actors (gloo), the
GPU share taken from the placement group, and a Serve LLM replica whose engine workers
run in its placement group."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("torch")

from llm_models import make_gpt  # noqa: E402

from raylite import serve  # noqa: E402
from raylite.llm import LLMEngine, SamplingParams  # noqa: E402
from raylite.serve.llm import LLMConfig, build_openai_app  # noqa: E402
from raylite.util import placement_group_table  # noqa: E402

pytestmark = pytest.mark.timeout(120)
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
PROMPTS = [[1, 2, 3], list(range(40, 75)), [9] * 7]


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gpt"))
    make_gpt(path, n_head=4, n_embd=32)
    return path


def test_tensor_parallel_equals_one_process(serve_url, gpt):
    ref = LLMEngine(gpt).generate(PROMPTS, GREEDY)
    eng = LLMEngine(gpt, tensor_parallel_size=2, tp_worker_num_cpus=0.5,
                    num_kv_blocks=14, block_size=4, max_num_batched_tokens=16)
    try:
        assert len(eng.model.workers) == 2 and eng.model.num_heads == 2  # 4 heads split
        out = eng.generate(PROMPTS, GREEDY)
        assert [o.token_ids for o in out] == [o.token_ids for o in ref]
        assert eng.stats()["preemptions"] > 0  # through preemption and chunked prefill
    finally:
        eng.shutdown()


def test_tensor_parallel_needs_divisible_heads(serve_url, tmp_path):
    make_gpt(str(tmp_path), n_head=3, n_embd=24)
    with pytest.raises(Exception, match="divisible"):
        LLMEngine(str(tmp_path), tensor_parallel_size=2, tp_worker_num_cpus=0.5)


def test_gpu_share_comes_from_the_first_gpu_bundle():
    def cfg(bundles=None, env=None):
        return LLMConfig(model_loading_config={"model_id": "m"},
                         placement_group_config=None if bundles is None else
                         {"bundles": bundles, "strategy": "STRICT_PACK"},
                         runtime_env=None if env is None else {"env_vars": env})

    c = cfg([{"CPU": 1, "GPU": 0.5}, {"GPU": 0.5}])
    assert c.per_worker_gpus() == 0.5
    opts = c.deployment_options()
    actor = opts["ray_actor_options"]
    assert actor["num_gpus"] == 0.5 and actor["num_cpus"] == 1
    assert actor["runtime_env"]["env_vars"]["RAYLITE_LLM_PER_WORKER_GPUS"] == "0.5"
    assert opts["placement_group_bundles"][1] == {"GPU": 0.5}
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    # a share the user set wins; a whole GPU or no GPU sets nothing
    assert cfg([{"GPU": 0.5}], env={"RAYLITE_LLM_PER_WORKER_GPUS": "0.25"}) \
        .per_worker_gpus() == 0.25
    assert cfg([{"CPU": 1}, {"GPU": 1}]).per_worker_gpus() is None
    assert cfg([{"CPU": 1}]).per_worker_gpus() is None
    assert cfg().per_worker_gpus() is None


def test_serve_replica_and_its_tp_workers_share_a_placement_group(serve_url, gpt):
    config = LLMConfig(
        model_loading_config={"model_id": "tp", "model_source": gpt},
        engine_kwargs={"tensor_parallel_size": 2, "tp_worker_num_cpus": 0.5},
        placement_group_config={"bundles": [{"CPU": 0.1}, {"CPU": 0.5}, {"CPU": 0.5}],
                                "strategy": "PACK"})
    serve.run(build_openai_app({"llm_configs": [config]}), name="tp", route_prefix="/tp")
    try:
        r = httpx.post(f"{serve_url}/tp/v1/completions", timeout=60,
                       json={"prompt": [1, 2, 3], "max_tokens": 12, "temperature": 0,
                             "ignore_eos": True})
        assert r.status_code == 200, r.text
        ref = LLMEngine(gpt).generate([[1, 2, 3]], GREEDY)[0]
        assert r.json()["choices"][0]["text"] == ref.text
        groups = [g for g in placement_group_table().values()
                  if g.get("state") == "CREATED" and len(g.get("bundles", {})) == 3]
        assert groups, placement_group_table()
    finally:
        serve.delete("tp")
