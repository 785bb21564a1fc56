"""LLM benchmark: raylite's engine beside HF ``generate`` with static batching and the
model's own decode step (the floor), in-process and through the OpenAI HTTP endpoint.

Run from the repository root:

    python benchmarks/llm.py [--quick]            # CPU: everything, JSON + plot
    python benchmarks/llm.py --device cuda --model gpt2-124m   # GPU check (no HTTP)

Model: a GPT-2-style transformer with random weights (HF ``GPT2LMHeadModel``; the
engine serves the same module through its paged forward): ``small`` = 6 layers, d=384,
6 heads, vocab 4096, fp32 (12.4M parameters, the issue's); ``gpt2-124m`` = GPT-2 small's
shape. Workload: 4 requests per stream (``--quick``: 2) of 32-token random prompts and
max_new_tokens uniform in 8..128 (seeded), EOS ignored, sent by N concurrent streams (1, 8,
32): each stream is a client that takes the next request of the shared list the moment its
last one ended (fixed concurrency, as vLLM's ``benchmark_serving --max-concurrency``), so N
requests are in flight until the list runs out. Measured:

- engine: useful tokens/s (tokens asked for / wall time), time to first token (TTFT) and
  inter-token latency (ITL) p50/p99 per token, and the mean number of sequences that got
  a token per step (``mean_batch``), with the engine's default attention ("auto": the
  compiled C kernel on the CPU, gathered blocks on CUDA) and, beside it (not with
  ``--quick``), with torch's sparse ops and (CPU) with gathered blocks;
- HF static: the k-th requests of all streams as one ``generate`` batch, run to its
  longest request before the next batch (wasted = slots past their request's length);
- floor: the model's decode step at batch N with HF's KV cache, 128 steps after a
  prefill: tokens/s with no waste and no scheduling;
- HTTP: the same workload through ``/v1/completions`` with ``stream=true`` (N async
  aiohttp clients, as vLLM's ``benchmark_serving``; ``RAYLITE_BENCH_HTTP_CLIENT=httpx``
  for httpx, which costs the clients ~2.5x the CPU per token) on a 2-CPU raylite
  cluster: tokens/s, TTFT, ITL, the CPU time per token of Serve's proxy process, of the
  replica (its engine) and of the clients (CPU time holds up under load); and 15
  requests one at a time, their TTFT through HTTP beside the serving engine's own;
- prefix caching: TTFT of a prompt whose 512-token prefix is cached, against the same
  prompt cold (the fastest of 3 prefixes each).

Targets (issue #15, 2-core machine): engine >= 1,800 useful tokens/s at 32 streams (>= 80%
of the floor, >= 1.8x HF static); HTTP with streaming >= 1,500 tokens/s; HTTP TTFT within
5 ms of the engine's; prefix caching cuts TTFT >= 5x. Results:
``benchmarks/results/llm.json`` and ``benchmarks/results/llm.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._runner import run_json, write_json  # noqa: E402
from benchmarks.core import RESULTS, _shown, machine_info  # noqa: E402

MODELS = {"small": dict(vocab_size=4096, n_embd=384, n_layer=6, n_head=6),
          "gpt2-124m": dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12)}
STREAMS = (1, 8, 32)
PROMPT_LEN = 32
MAX_NEW = (8, 128)
ENGINE_KW = dict(max_num_seqs=64, max_num_batched_tokens=512, block_size=16)
TARGET = {"engine_tps": 1800.0, "floor_frac": 0.8, "vs_hf": 1.8, "http_tps": 1500.0,
          "ttft_gap_ms": 5.0, "prefix_speedup": 5.0}
WORKER_TIMEOUT_S = 1500
try:
    import aiohttp  # noqa: F401
    HTTP_CLIENT = os.environ.get("RAYLITE_BENCH_HTTP_CLIENT", "aiohttp")  # or "httpx"
except ImportError:
    HTTP_CLIENT = "httpx"


# --------------------------------------------------------------------------- pieces
def make_model(name: str, device: str = "cpu", seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_positions=1024, **MODELS[name])
    return GPT2LMHeadModel(cfg).eval().to(device)


def workload(n: int, vocab: int, seed: int = 0, per_stream: int = 4
             ) -> list[list[tuple[list[int], int]]]:
    """``n`` lists of ``per_stream`` requests (prompt, max_new_tokens): the k-th requests
    of all lists are one static batch for HF; the engine and HTTP clients take them in
    that order from one shared queue (``in_order``)."""
    rnd = random.Random(seed + n)
    return [[([rnd.randrange(vocab) for _ in range(PROMPT_LEN)], rnd.randint(*MAX_NEW))
             for _ in range(per_stream)] for _ in range(n)]


def in_order(streams) -> list[tuple[list[int], int]]:
    """Every request, the first of each stream first (the order static batching uses)."""
    return [reqs[k] for k in range(len(streams[0])) for reqs in streams]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def latency_summary(times: dict[str, list[float]], start: dict[str, float]) -> dict:
    ttft = [ts[0] - start[r] for r, ts in times.items() if ts]
    itl = [b - a for ts in times.values() for a, b in zip(ts, ts[1:], strict=False)]
    ms = 1000.0
    return {"ttft_p50_ms": pct(ttft, .5) * ms, "ttft_p99_ms": pct(ttft, .99) * ms,
            "itl_p50_ms": (pct(itl, .5) or 0) * ms, "itl_p99_ms": (pct(itl, .99) or 0) * ms}


def run_engine(engine, streams) -> dict:
    """Every request through the engine with ``len(streams)`` in flight: a finished
    request's slot takes the next one of the shared queue at once (continuous batching
    refills it in the next step)."""
    from raylite.llm import SamplingParams

    times: dict[str, list[float]] = {}
    start: dict[str, float] = {}
    queue = list(reversed(in_order(streams)))

    def submit() -> None:
        if queue:
            prompt, n = queue.pop()
            rid = engine.add_request(f"r{len(queue)}", prompt, SamplingParams(
                max_tokens=n, temperature=0, ignore_eos=True))
            start[rid], times[rid] = time.perf_counter(), []

    steps0 = engine.stats()["steps"]
    t0 = time.perf_counter()
    for _ in streams:
        submit()
    while engine.has_unfinished_requests():
        outs = engine.step()
        now = time.perf_counter()
        for o in outs:
            times[o.request_id].extend([now] * len(o.delta_token_ids))
            if o.finished:
                submit()
    wall = time.perf_counter() - t0
    useful = sum(n for reqs in streams for _, n in reqs)
    return {"tokens_per_s": useful / wall, "wall_s": wall,
            "mean_batch": useful / max(1, engine.stats()["steps"] - steps0),
            **latency_summary(times, start)}


def run_hf_static(model, streams) -> dict:
    """The same requests as static batches: the k-th request of every stream together,
    each batch generating to its longest request before the next batch starts."""
    import torch

    dev = next(model.parameters()).device
    useful = slots = 0
    _sync(dev)
    t0 = time.perf_counter()
    for k in range(len(streams[0])):
        batch = [reqs[k] for reqs in streams]
        ids = torch.tensor([p for p, _ in batch], device=dev)
        longest = max(n for _, n in batch)
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=longest,
                           min_new_tokens=longest, do_sample=False, pad_token_id=0)
        useful += sum(n for _, n in batch)
        slots += len(batch) * longest
    _sync(dev)
    wall = time.perf_counter() - t0
    return {"tokens_per_s": useful / wall, "wall_s": wall, "wasted_frac": 1 - useful / slots}


def run_floor(model, n: int, steps: int = 128) -> dict:
    import torch
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (n, PROMPT_LEN), device=dev)
    with torch.inference_mode():
        cache = DynamicCache()
        out = model(ids, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(tok, past_key_values=out.past_key_values, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(dev)
    wall = time.perf_counter() - t0
    return {"tokens_per_s": n * steps / wall, "step_ms": wall / steps * 1000}


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def new_engine(model, **kw):
    from raylite.llm import LLMEngine

    if next(model.parameters()).device.type == "cuda":
        kw.setdefault("kv_cache_memory_mb", 4096)  # room for every stream, no preemption
    eng = LLMEngine(model, **{**ENGINE_KW, **kw})
    eng.generate([[1] * 8] * 4, _greedy(4))  # warm-up
    return eng


def _greedy(n: int):
    from raylite.llm import SamplingParams

    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def run_prefix(model, repeats: int = 3) -> dict:
    """TTFT of a prompt with a cached 512-token prefix vs a cold one (each the fastest
    of ``repeats`` different prefixes)."""
    rnd = random.Random(7)
    vocab = model.config.vocab_size
    cold, warm = [], []
    eng = new_engine(model, max_num_batched_tokens=1024)
    for _ in range(repeats):
        prefix = [rnd.randrange(vocab) for _ in range(512)]
        for bucket, suffix in ((cold, [1, 2, 3]), (warm, [4, 5, 6])):
            t0 = time.perf_counter()
            eng.generate([prefix + suffix], _greedy(1))
            bucket.append(time.perf_counter() - t0)
    c, w = min(cold), min(warm)  # the least disturbed of the runs
    return {"cold_ttft_ms": c * 1000, "warm_ttft_ms": w * 1000, "speedup": c / w,
            "hit_rate": eng.stats()["prefix_cache_hit_rate"]}


def run_http(model, streams: tuple[int, ...], engine_ttft_1: float | None,
             repeats: int = 1, per_stream: int = 4, replica_cpus: float = 0,
             replicas: int = 1) -> dict:
    """The workload through the OpenAI endpoint of ``replicas`` LLMServer replicas that
    each reserve ``replica_cpus`` (the benchmark's default: one replica, no CPU reserved,
    so its engine runs one torch thread)."""
    import psutil

    import raylite
    from raylite import serve
    from raylite.serve.llm import LLMConfig, build_openai_app

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="raylite-llm-bench-") as tmp:
        model.save_pretrained(tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        raylite.init(num_cpus=2)
        try:
            serve.start(http_options={"port": port})
            cfg = LLMConfig(model_loading_config={"model_id": "m", "model_source": tmp},
                            engine_kwargs=ENGINE_KW,
                            deployment_config={"num_replicas": replicas,
                                               "ray_actor_options": {"num_cpus": replica_cpus}})
            serve.run(build_openai_app({"llm_configs": [cfg]}), name="llm", route_prefix="/")
            url = f"http://127.0.0.1:{port}/v1/completions"
            asyncio.run(_http_round(url, workload(4, model.config.vocab_size, 99, 1)))
            procs = {"proxy": _listener(port), "clients": psutil.Process(),
                     "replica": _replica_process()}
            for _ in range(repeats):
                for n in streams:
                    out[str(n)] = _best(out.get(str(n)), asyncio.run(_http_round(
                        url, workload(n, model.config.vocab_size, per_stream=per_stream),
                        procs)))
            if replicas == 1:  # the engine's own TTFTs come from the replica that served
                out["ttft_probe"] = _ttft_probe(url, serve.get_deployment_handle(
                    "LLMServer_m", "llm"))
        finally:
            serve.shutdown()
            raylite.shutdown()
    if engine_ttft_1 is not None and "1" in out:
        out["ttft_gap_ms_1_stream"] = out["1"]["ttft_p50_ms"] - engine_ttft_1
    return out


def _ttft_probe(url: str, server, n: int = 15) -> dict:
    """TTFT through HTTP (streamed) beside the serving engine's own TTFT for the same
    requests, one at a time: the difference is what HTTP and Serve add."""
    import httpx

    http = []
    with httpx.Client(timeout=60) as c:
        for _ in range(n):
            body = {"model": "m", "prompt": list(range(PROMPT_LEN)), "max_tokens": 1,
                    "temperature": 0, "stream": True}
            t = time.perf_counter()
            with c.stream("POST", url, json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        http.append(time.perf_counter() - t)
                        break
    engine = server.stats.remote().result(timeout_s=30)["ttft_recent_s"][-n:]
    h, e = statistics.median(http) * 1000, statistics.median(engine) * 1000
    return {"http_ttft_ms": h, "engine_ttft_ms": e, "gap_ms": h - e}


def _listener(port: int):
    """The process listening on ``port`` (Serve's HTTP proxy), or None."""
    import psutil

    for c in psutil.net_connections("tcp"):
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
            return psutil.Process(c.pid)
    return None


def _replica_process():
    """The process of the (one) Serve replica, the LLMServer: its engine runs there."""
    import psutil

    from raylite.util import state

    for a in state.list_actors():
        if a.get("state") == "ALIVE" and "Replica" in (a.get("class_name") or "") and a.get("pid"):
            return psutil.Process(a["pid"])
    return None


def _cpu_s(procs: dict) -> dict:
    return {k: sum(p.cpu_times()[:2]) for k, p in procs.items() if p is not None}


async def _http_round(url: str, streams, procs: dict | None = None) -> dict:
    """The workload through HTTP; with ``procs`` ({name: psutil.Process}) also their CPU
    time per streamed token (CPU time holds up better than wall time on a loaded
    machine: it says what the serving path costs, not how long it waited). The clients
    use aiohttp (as vLLM's ``benchmark_serving``), or httpx (``HTTP_CLIENT``): on two
    cores the clients' own CPU time is taken from the server's."""
    times: dict[str, list[float]] = {}
    start: dict[str, float] = {}
    counts: list[int] = []

    def on_line(rid: str, line: bytes) -> None:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            return
        ev = json.loads(line[6:])
        if ev.get("usage"):
            counts.append(ev["usage"]["completion_tokens"])
        elif ev["choices"]:  # one event a token
            times[rid].append(time.perf_counter())

    async with _client(len(streams) + 4) as post:
        async def one(rid, p, n):
            times[rid] = []
            start[rid] = time.perf_counter()
            body = {"model": "m", "prompt": p, "max_tokens": n, "temperature": 0,
                    "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            async for line in post(url, body):
                on_line(rid, line)

        queue = list(reversed(in_order(streams)))

        async def stream():  # a client: the next request of the queue once one ends
            while queue:
                p, n = queue.pop()
                await one(f"r{len(queue)}", p, n)

        cpu0 = _cpu_s(procs or {})
        t0 = time.perf_counter()
        await asyncio.gather(*(stream() for _ in streams))
        wall = time.perf_counter() - t0
        cpu = {f"cpu_us_per_token_{k}": (v - cpu0[k]) / max(1, sum(counts)) * 1e6
               for k, v in _cpu_s(procs or {}).items()}
    return {"tokens_per_s": sum(counts) / wall, "wall_s": wall, "tokens": sum(counts),
            "client": HTTP_CLIENT, **latency_summary(times, start), **cpu}


@contextlib.asynccontextmanager
async def _client(connections: int):
    """``post(url, body)``: an async iterator of the response's lines (bytes), through
    one pooled session of ``HTTP_CLIENT``."""
    if HTTP_CLIENT == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            async def post(url, body):
                async with client.stream("POST", url, json=body) as r:
                    r.raise_for_status()
                    async for line in r.aiter_lines():
                        yield line.encode()
            yield post
        return
    import aiohttp

    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def post(url, body):
            async with session.post(url, json=body) as r:
                r.raise_for_status()
                async for line in r.content:  # split at b"\n"
                    yield line.rstrip(b"\n")
        yield post


# --------------------------------------------------------------------------- worker
def _best(old: dict | None, new: dict) -> dict:
    """The better of two runs (the higher tokens/s): on a shared machine the best of a
    few runs is the closest to what the code does on a quiet one."""
    return new if old is None or new["tokens_per_s"] > old["tokens_per_s"] else old


def measure(model_name: str, device: str, streams: tuple[int, ...], http: bool,
            quick: bool, repeats: int, replicas: int = 1, replica_cpus: float = 0) -> dict:
    import torch

    torch.manual_seed(0)
    model = make_model(model_name, device)
    res: dict[str, Any] = {"model": model_name, "device": device, "repeats": repeats,
                           "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                           "torch_threads": torch.get_num_threads()}
    # "auto" (the engine's default: the C kernel on the CPU, gathered blocks on CUDA)
    # beside the other in-place and copying forms
    others = () if quick else ("sparse", "gather") if device == "cpu" else ("sparse",)
    per_stream = 2 if quick else 4
    engines = {b: new_engine(model, attention_backend=b) for b in ("auto", *others)}
    res["attention_backend"] = engines["auto"].config.attention_backend
    for rep in range(repeats):  # interleaved, so a burst of load hits every series alike
        for n in streams:
            work = workload(n, model.config.vocab_size, per_stream=per_stream)
            runs = {("engine" if b == "auto" else f"engine_{b}"):
                    partial(run_engine, e, work) for b, e in engines.items()}
            runs["hf_static"] = partial(run_hf_static, model, work)
            runs["floor"] = partial(run_floor, model, n, 32 if quick else 128)
            for key, fn in runs.items():
                got = res.setdefault(key, {})
                got[str(n)] = _best(got.get(str(n)), fn())
            print(f"run {rep + 1}/{repeats}, {n:2d} streams: " + ", ".join(
                f"{k} {res[k][str(n)]['tokens_per_s']:.0f}" for k in runs) + " tok/s (best)",
                flush=True)
    res["prefix"] = run_prefix(model, 1 if quick else 3)
    print(f"prefix cache: TTFT {res['prefix']['cold_ttft_ms']:.1f} ms cold, "
          f"{res['prefix']['warm_ttft_ms']:.1f} ms cached", flush=True)
    if http:
        e1 = res["engine"].get("1", {}).get("ttft_p50_ms")
        res["http"] = run_http(model, streams, e1, repeats, per_stream, replica_cpus,
                               replicas)
        for n in streams:
            print(f"http           {n:3d} streams: "
                  f"{res['http'][str(n)]['tokens_per_s']:8.0f} tok/s", flush=True)
    return res


def summary(res: dict) -> dict:
    big = str(max(int(k) for k in res["engine"]))
    e = res["engine"][big]["tokens_per_s"]
    f = res["floor"][big]["tokens_per_s"]
    h = res["hf_static"][big]["tokens_per_s"]
    out = {"streams": int(big), "engine_tps": e, "floor_tps": f, "hf_static_tps": h,
           "engine_vs_floor": e / f, "engine_vs_hf": e / h,
           "hf_wasted_frac": res["hf_static"][big]["wasted_frac"],
           "prefix_speedup": res["prefix"]["speedup"]}
    if "http" in res and big in res["http"]:
        out["http_tps"] = res["http"][big]["tokens_per_s"]
        out["ttft_gap_ms"] = res["http"].get("ttft_probe", {}).get("gap_ms")
    return out


def print_table(res: dict) -> None:
    streams = sorted(int(k) for k in res["engine"])
    print(f"\nLLM ({res['model']}, {res['params_M']:.1f}M params, {res['device']})")
    print(f"{'':18s}" + "".join(f"{n:>10d}" for n in streams) + "   streams")
    rows = [(f"engine ({res.get('attention_backend', 'auto')})", "engine"),
            ("engine (sparse)", "engine_sparse"), ("engine (gather)", "engine_gather"),
            ("HF static", "hf_static"), ("decode floor", "floor"), ("HTTP stream", "http")]
    for label, key in rows:
        if key in res:
            print(f"{label:18s}" + "".join(
                f"{res[key][str(n)]['tokens_per_s']:10.0f}" if str(n) in res[key] else
                f"{'-':>10s}" for n in streams) + "   tokens/s")
    for key in ("engine", "http"):
        if key in res:
            for n in streams:
                r = res[key].get(str(n))
                if r:
                    print(f"  {key} {n:2d}: TTFT p50/p99 {r['ttft_p50_ms']:.1f}/"
                          f"{r['ttft_p99_ms']:.1f} ms, ITL p50/p99 {r['itl_p50_ms']:.1f}/"
                          f"{r['itl_p99_ms']:.1f} ms" + (
                              f", {r['mean_batch']:.1f} sequences a step"
                              if "mean_batch" in r else "") + (
                              f", CPU per token: proxy "
                              f"{r['cpu_us_per_token_proxy']:.0f} us, clients "
                              f"{r['cpu_us_per_token_clients']:.0f} us"
                              if "cpu_us_per_token_proxy" in r else ""))
    p = res["prefix"]
    print(f"  prefix cache (512-token prefix): TTFT {p['cold_ttft_ms']:.1f} -> "
          f"{p['warm_ttft_ms']:.1f} ms ({p['speedup']:.1f}x)")
    s = summary(res)
    print(f"  at {s['streams']} streams: engine {s['engine_tps']:.0f} tok/s = "
          f"{s['engine_vs_floor'] * 100:.0f}% of the floor, {s['engine_vs_hf']:.2f}x HF "
          f"static (HF wastes {s['hf_wasted_frac'] * 100:.0f}% of its slots)")
    if "http_tps" in s:
        probe = res["http"].get("ttft_probe")
        print(f"  HTTP {s['http_tps']:.0f} tok/s"
              + (f"; TTFT one request at a time: {probe['http_ttft_ms']:.1f} ms through "
                 f"HTTP, {probe['engine_ttft_ms']:.1f} ms in the serving engine (+"
                 f"{probe['gap_ms']:.1f} ms)" if probe else ""))


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = sorted(int(k) for k in res["engine"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    series = [("engine", "raylite engine"), ("engine_sparse", "engine, sparse torch ops"),
              ("engine_gather", "engine, gathered KV"),
              ("http", "engine via HTTP (SSE)"), ("hf_static", "HF generate (static)"),
              ("floor", "decode floor")]
    width = 0.8 / len([k for k, _ in series if k in res])
    i = 0
    for key, label in series:
        if key not in res:
            continue
        xs = [j + i * width for j in range(len(streams))]
        a.bar(xs, [res[key].get(str(n), {}).get("tokens_per_s", 0) for n in streams],
              width, label=label)
        i += 1
    a.set_xticks([j + 0.4 - width / 2 for j in range(len(streams))], [str(n) for n in streams])
    a.set_xlabel("concurrent streams")
    a.set_ylabel("useful tokens / s")
    a.legend(fontsize=8)
    a.set_title(f"throughput ({res['model']}, {res['params_M']:.1f}M, {res['device']})")
    for key, label in (("engine", "engine"), ("http", "HTTP")):
        if key in res:
            b.plot(streams, [res[key][str(n)]["ttft_p50_ms"] for n in streams], "o-",
                   label=f"{label} TTFT p50")
            b.plot(streams, [res[key][str(n)]["itl_p50_ms"] for n in streams], "s--",
                   label=f"{label} ITL p50")
    b.set_xscale("log", base=2)
    b.set_xlabel("concurrent streams")
    b.set_ylabel("ms")
    b.legend(fontsize=8)
    b.set_title("latency")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 and 8 streams, shorter runs")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda: no HTTP part)")
    p.add_argument("--model", choices=sorted(MODELS), default="small")
    p.add_argument("--streams", type=int, nargs="+", help="concurrent streams")
    p.add_argument("--no-http", action="store_true", help="skip the HTTP part")
    p.add_argument("--repeats", type=int, help="runs per point, the best kept (default 3; "
                   "--quick: 1)")
    p.add_argument("--replicas", type=int, default=1, help="HTTP: LLMServer replicas "
                   "(each with its own engine)")
    p.add_argument("--replica-cpus", type=float, default=0, help="HTTP: CPUs each replica "
                   "reserves, which is also its engine's torch threads (0: one thread)")
    p.add_argument("--json", type=Path, default=RESULTS / "llm.json", help="JSON output")
    p.add_argument("--png", type=Path, default=RESULTS / "llm.png", help="chart output")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    streams = tuple(args.streams or ((1, 8) if args.quick else STREAMS))
    http = not args.no_http and args.device == "cpu"
    repeats = args.repeats or (1 if args.quick else 3)
    if args.worker:
        write_json(args.out, measure(args.model, args.device, streams, http, args.quick,
                                     repeats, args.replicas, args.replica_cpus))
        return
    if args.device != "cpu":  # the GPU check: in this process, printed, no files
        res = measure(args.model, args.device, streams, False, args.quick, repeats)
        print_table(res)
        return
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--device",
           args.device, "--streams", *map(str, streams), "--repeats", str(repeats),
           "--replicas", str(args.replicas), "--replica-cpus", str(args.replica_cpus)] + \
        (["--quick"] if args.quick else []) + (["--no-http"] if not http else [])
    res = run_json(cmd, timeout_s=WORKER_TIMEOUT_S)
    if "skipped" in res:
        print(f"LLM benchmark failed: {res['skipped']}\n{res.get('log', '')}")
        sys.exit(1)
    res["summary"] = summary(res)
    res["target"] = TARGET
    res["machine"] = machine_info()
    res["load_avg"] = os.getloadavg()
    print_table(res)
    write_json(args.json, res)
    plot(res, args.png)
    print(f"wrote {_shown(args.json)} and {_shown(args.png)}")


if __name__ == "__main__":
    main()
