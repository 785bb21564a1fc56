"""The engine: greedy output equals the models' own (raylite GPT by a plain forward, HF
GPT-2 and Llama by ``generate``) through chunked prefill, preemption and prefix caching;
the block manager; sampling; the async API."""

from __future__ import annotations

import asyncio
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llm_models import make_gpt, make_hf  # noqa: E402

from raylite.llm import AsyncLLMEngine, LLMEngine, SamplingParams  # noqa: E402
from raylite.llm._private.kv_cache import BlockManager  # noqa: E402

pytestmark = pytest.mark.timeout(120)

GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gpt"))
    return path, make_gpt(path)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def hf_model(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    model, tok = make_hf(path, request.param)
    return path, model, tok


def reference_greedy(model, ids, n):
    ids, out = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([ids]))[0, -1].argmax())
            out.append(t)
            ids.append(t)
    return out


PROMPTS = [list(range(1, 4)), list(range(20, 57)), [7] * 18, list(range(100, 105)),
           list(range(60, 93))]


@pytest.mark.parametrize("backend", ["kernel", "sparse", "gather"])
@pytest.mark.parametrize("kw", [{}, {"num_kv_blocks": 20, "block_size": 4,
                                     "max_num_batched_tokens": 16}],
                         ids=["roomy", "tight"])
def test_own_gpt_greedy_equals_its_forward(gpt_dir, backend, kw):
    path, model = gpt_dir
    eng = LLMEngine(path, attention_backend=backend, **kw)
    outs = eng.generate(PROMPTS, SamplingParams(max_tokens=20, **GREEDY))
    for p, o in zip(PROMPTS, outs, strict=True):
        assert o.token_ids == reference_greedy(model, p, 20)
        assert o.finish_reason == "length"
    st = eng.stats()
    if kw:  # 20 blocks of 4 cannot hold five sequences: some were preempted, recomputed
        assert st["preemptions"] > 0
    assert st["kv_blocks_used"] == 0 and st["running"] == st["waiting"] == 0


@pytest.mark.parametrize("H,Hk", [(6, 6), (8, 2)], ids=["mha", "gqa"])
def test_cpu_kernel_reads_scattered_blocks_like_dense_attention(H, Hk):
    """The compiled decode kernel against torch's dense attention over the same keys,
    gathered: blocks scattered over the pool in random order, sequences of uneven
    lengths (a partial last block), grouped-query heads."""
    from raylite.llm._private import cpu_kernel

    assert cpu_kernel.available(), "the CI machine has a C compiler: the kernel must build"
    g = torch.Generator().manual_seed(3)
    B, D, bs, n_blocks = 5, 16, 4, 64
    kp = torch.randn(n_blocks * bs, Hk, D, generator=g)
    vp = torch.randn(n_blocks * bs, Hk, D, generator=g)
    lens = torch.tensor([1, 4, 5, 17, 30])
    W = int(lens.max() + bs - 1) // bs
    tables = torch.randperm(n_blocks, generator=g)[:B * W].view(B, W).contiguous()
    q = torch.randn(B, H, D, generator=g)
    out = cpu_kernel.paged_decode(q, kp, vp, tables, lens, int(lens.max()), bs, 0.3)
    for b in range(B):
        pos = torch.arange(int(lens[b]))
        slots = tables[b][pos // bs] * bs + pos % bs
        k = kp[slots].transpose(0, 1).repeat_interleave(H // Hk, 0)   # (H, L, D)
        v = vp[slots].transpose(0, 1).repeat_interleave(H // Hk, 0)
        ref = torch.nn.functional.scaled_dot_product_attention(q[b][:, None], k, v,
                                                               scale=0.3)[:, 0]
        torch.testing.assert_close(out[b], ref, rtol=1e-5, atol=1e-5)


def test_cpu_engine_picks_the_kernel_and_onednn_linears(gpt_dir):
    """On this CPU, float32: "auto" is the compiled kernel and the linears run through
    packed oneDNN weights; float64 falls back to sparse attention and torch's linears,
    and asking for the kernel there is an error that says why."""
    path, model = gpt_dir
    eng = LLMEngine(path, device="cpu")  # "auto" would pick CUDA where there is one
    assert eng.config.attention_backend == "kernel" and eng.model.onednn
    wide = LLMEngine(model.double(), device="cpu")
    try:
        assert wide.config.attention_backend == "sparse" and not wide.model.onednn
        out = wide.generate([[1, 2, 3]], SamplingParams(max_tokens=6, **GREEDY))[0]
        assert out.token_ids == reference_greedy(model, [1, 2, 3], 6)
        with pytest.raises(ValueError, match="float32 model on the CPU"):
            LLMEngine(model, attention_backend="kernel", device="cpu")
    finally:
        model.float()


def test_cpu_kernel_builds_once_per_machine(tmp_path):
    """A fresh kernel directory: the first process compiles the kernel there, the next
    one loads the same file without compiling."""
    import subprocess
    import sys

    code = ("import os; from raylite.llm._private import cpu_kernel as k; "
            "assert k.load() is not None; "
            "print(sorted(os.listdir(k.kernel_dir())))")
    env = {**os.environ, "RAYLITE_KERNEL_DIR": str(tmp_path / "k")}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=60, check=True).stdout
    files = list((tmp_path / "k").iterdir())
    assert len(files) == 1 and files[0].suffix == ".so" and files[0].name in first
    mtime = files[0].stat().st_mtime_ns
    subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                   timeout=60, check=True)
    assert [f.stat().st_mtime_ns for f in (tmp_path / "k").iterdir()] == [mtime]


def test_hf_greedy_equals_generate(hf_model):
    path, model, tok = hf_model
    eng = LLMEngine(path, num_kv_blocks=40, block_size=4, max_num_batched_tokens=24)
    prompts = ["def main():", "The for statement is used to iterate over the elements",
               "x"]
    outs = eng.generate(prompts, SamplingParams(max_tokens=16, **GREEDY))
    for p, o in zip(prompts, outs, strict=True):
        ids = tok(p)["input_ids"]
        assert o.prompt_token_ids == ids
        ref = model.generate(torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16,
                             do_sample=False, pad_token_id=tok.eos_token_id)
        assert o.token_ids == ref[0, len(ids):].tolist()
        assert o.text == tok.decode(o.token_ids, skip_special_tokens=True)


def test_chunked_prefill_never_stalls_decoding(gpt_dir):
    path, _ = gpt_dir
    eng = LLMEngine(path, max_num_batched_tokens=16)
    eng.add_request("short", [1, 2, 3], SamplingParams(max_tokens=30, **GREEDY))
    eng.step()  # the short prompt is prefilled and gets its first token
    eng.add_request("long", list(range(1, 120)), SamplingParams(max_tokens=2, **GREEDY))
    got = []
    while eng.has_unfinished_requests():
        outs = {o.request_id: o for o in eng.step()}
        got.append(outs)
        if "long" in outs:
            break
    # the 119-token prompt took several steps of at most 15 tokens; every one of them
    # also produced a token for the decoding sequence
    assert len(got) >= 119 // 15
    assert all("short" in outs for outs in got)


def test_prefix_cache_shares_blocks_and_counts_hits(gpt_dir):
    path, model = gpt_dir
    eng = LLMEngine(path, block_size=8)
    prefix = list(range(30, 70))  # 5 full blocks
    a = eng.generate([prefix + [1]], SamplingParams(max_tokens=4, **GREEDY))[0]
    assert a.num_cached_tokens == 0
    b = eng.generate([prefix + [2]], SamplingParams(max_tokens=4, **GREEDY))[0]
    assert b.num_cached_tokens == 40
    assert b.token_ids == reference_greedy(model, prefix + [2], 4)
    st = eng.stats()
    assert st["prefix_cache_hits"] == 40 and 0 < st["prefix_cache_hit_rate"] < 1
    # the same prompt again: all but its last token's block come from the cache
    c = eng.generate([prefix], SamplingParams(max_tokens=4, **GREEDY))[0]
    assert c.num_cached_tokens == 32 and c.token_ids == reference_greedy(model, prefix, 4)


def test_prefix_cache_evicts_least_recently_used_blocks(gpt_dir):
    path, _ = gpt_dir
    eng = LLMEngine(path, block_size=4, num_kv_blocks=12)
    for start in (0, 50, 100, 150):  # each leaves 4 cached blocks; 12 fit
        eng.generate([list(range(start, start + 17))], SamplingParams(max_tokens=1))
    assert eng.stats()["prefix_cache_evictions"] > 0
    # the newest prompt is still cached, the oldest is gone
    assert eng.generate([list(range(150, 167))], SamplingParams(max_tokens=1))[0] \
        .num_cached_tokens == 16
    assert eng.generate([list(range(0, 17))], SamplingParams(max_tokens=1))[0] \
        .num_cached_tokens == 0


def test_block_manager_free_list_refcounts_and_lru():
    bm = BlockManager(4, 2)
    a = bm.allocate(2)
    assert a == [0, 1] and bm.num_free == 2
    assert bm.allocate(3) is None and bm.num_free == 2  # all or nothing
    bm.register(a[0], 111)
    blocks, hashes = bm.match_prefix([5, 6, 7], 3)  # hash of (None, (5, 6)) is unknown
    assert blocks == []
    bm.free(a)
    assert bm.num_free == 4 and bm.num_cached == 1  # block 0 stays cached, evictable
    assert sorted(bm.allocate(3)) == [1, 2, 3]
    assert bm.allocate(1) == [0] and bm.stats.evictions == 1 and bm.num_cached == 0


def test_block_manager_prefix_chain():
    from raylite.llm._private.kv_cache import block_hash

    bm = BlockManager(8, 2)
    b = bm.allocate(2)
    h1 = block_hash(None, (1, 2))
    h2 = block_hash(h1, (3, 4))
    bm.register(b[0], h1)
    bm.register(b[1], h2)
    blocks, _ = bm.match_prefix([1, 2, 3, 4, 5], 5)
    assert blocks == b and bm._ref[b[0]] == 2
    blocks, _ = bm.match_prefix([9, 9, 3, 4], 4)  # same second block, other first: no
    assert blocks == []


# ---------------------------------------------------------------- sampling


def test_seeded_sampling_is_reproducible_whatever_the_batch(gpt_dir):
    path, _ = gpt_dir
    eng = LLMEngine(path)
    sp = SamplingParams(max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    alone = eng.generate([[1, 2, 3]], sp)[0].token_ids
    others = [SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)] * 3
    crowd = eng.generate([[9, 9], [1, 2, 3], [4], [5, 6]], [others[0], sp, *others[1:]])
    assert crowd[1].token_ids == alone
    different = eng.generate([[1, 2, 3]], SamplingParams(max_tokens=12, seed=8,
                                                         ignore_eos=True))[0]
    assert different.token_ids != alone


def test_top_k_1_and_tiny_top_p_are_greedy(gpt_dir):
    path, model = gpt_dir
    eng = LLMEngine(path)
    ref = reference_greedy(model, [3, 4, 5], 10)
    for sp in (SamplingParams(max_tokens=10, top_k=1, ignore_eos=True),
               SamplingParams(max_tokens=10, top_p=1e-6, ignore_eos=True),
               SamplingParams(max_tokens=10, temperature=1e-4, ignore_eos=True)):
        assert eng.generate([[3, 4, 5]], sp)[0].token_ids == ref


def pick_stop(text: str) -> tuple[str, int]:
    """A 2-character stop string whose first occurrence is well inside ``text``."""
    for i in range(3, len(text) - 2):
        s = text[i:i + 2]
        if "\ufffd" not in s and text.find(s) == i:
            return s, i
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_strings_tokens_and_max_tokens(gpt_dir):
    path, model = gpt_dir
    eng = LLMEngine(path)
    ref = reference_greedy(model, [65, 66], 30)
    full = eng.tokenizer.decode(ref)
    stop, at = pick_stop(full)
    o = eng.generate([[65, 66]], SamplingParams(max_tokens=30, stop=[stop], **GREEDY))[0]
    assert o.text == full[:at] and o.finish_reason == "stop"
    k = next(k for k in range(1, 30) if ref[k] not in ref[:k])
    o = eng.generate([[65, 66]], SamplingParams(max_tokens=30, stop_token_ids=[ref[k]],
                                                **GREEDY))[0]
    assert o.token_ids == ref[:k + 1] and o.finish_reason == "stop"
    assert o.text == eng.tokenizer.decode(ref[:k])
    o = eng.generate([[65, 66]], SamplingParams(max_tokens=3, **GREEDY))[0]
    assert o.token_ids == ref[:3] and o.finish_reason == "length"


def test_streamed_deltas_add_up_and_never_show_a_stop_string(gpt_dir):
    path, model = gpt_dir
    eng = LLMEngine(path)
    full = eng.tokenizer.decode(reference_greedy(model, [70], 40))
    stop, _ = pick_stop(full)
    eng.add_request("r", [70], SamplingParams(max_tokens=40, stop=[stop], **GREEDY))
    deltas = []
    while eng.has_unfinished_requests():
        deltas += [o.delta_text for o in eng.step()]
    assert "".join(deltas) == full[:full.find(stop)]


def test_logprobs_are_the_models_log_softmax(gpt_dir):
    path, model = gpt_dir
    eng = LLMEngine(path)
    o = eng.generate([[10, 11, 12]], SamplingParams(max_tokens=3, logprobs=2, **GREEDY))[0]
    ids = [10, 11, 12]
    for tok, (lp, top) in zip(o.token_ids, o.logprobs, strict=True):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids]))[0, -1], -1)
        assert lp == pytest.approx(float(ref[tok]), abs=1e-4)
        assert len(top) == 2 and tok in top  # greedy: the chosen one is the most likely
        ids.append(tok)


def test_bad_requests_and_options_raise():
    from raylite.llm import EngineConfig

    with pytest.raises(ValueError, match="unknown engine_kwargs"):
        EngineConfig.from_kwargs({"no_such_option": 1})
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


def test_prompt_that_cannot_fit_is_refused(gpt_dir):
    path, _ = gpt_dir
    eng = LLMEngine(path, num_kv_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="context"):
        eng.add_request(None, [1] * 300)
    with pytest.raises(ValueError, match="KV blocks"):
        eng.add_request(None, [1] * 10, SamplingParams(max_tokens=20))


# ---------------------------------------------------------------- async


def test_async_engine_many_callers_and_abort(gpt_dir):
    path, model = gpt_dir
    engine = AsyncLLMEngine(LLMEngine(path))

    async def collect(prompt):
        text, last = "", None
        async for out in engine.generate(prompt, SamplingParams(max_tokens=10, **GREEDY)):
            text += out.delta_text
            last = out
        return text, last

    async def abandon():
        async for _ in engine.generate([5], SamplingParams(max_tokens=200, **GREEDY)):
            break  # leaving the loop aborts the request

    async def main():
        results = await asyncio.gather(*(collect([i + 1, i + 2]) for i in range(6)),
                                       abandon())
        return results[:-1]

    try:
        results = asyncio.run(main())
        for i, (text, last) in enumerate(results):
            ref = reference_greedy(model, [i + 1, i + 2], 10)
            assert last.finished and last.token_ids == ref and text == last.text
        from raylite.testing import wait_for_condition

        wait_for_condition(lambda: engine.stats()["aborted"] == 1
                           and engine.stats()["kv_blocks_used"] == 0, timeout=10)
        with pytest.raises(ValueError):
            asyncio.run(collect([1] * 1000))
    finally:
        engine.shutdown()


def test_notebook_04s_character_gpt_is_served_as_trained(tmp_path):
    """The character GPT that notebook 04 trains (raylite.models.gpt) loads from its
    directory with its character tokenizer, and greedy output equals its own forward."""
    models = pytest.importorskip("raylite.models.gpt")
    torch.manual_seed(0)
    tok = models.CharTokenizer.from_text("abcdefghij klmnop")
    model = models.GPT(models.GPTConfig(vocab_size=tok.vocab_size, block_size=64,
                                        n_layer=2, n_head=4, n_embd=32)).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    models.save_pretrained(model, tok, str(tmp_path))
    eng = LLMEngine(str(tmp_path), block_size=4)
    out = eng.generate(["abc", "hello"], SamplingParams(max_tokens=12, temperature=0))
    for prompt, o in zip(["abc", "hello"], out, strict=True):
        ref = reference_greedy(lambda x: model(x)[0] if isinstance(model(x), tuple)
                               else model(x), tok.encode(prompt), 12)
        assert o.token_ids == ref and o.text == tok.decode(ref)
