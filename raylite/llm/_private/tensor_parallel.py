"""Tensor parallelism for GPT-2 shaped models (raylite's GPT, HF GPT-2) across raylite
actors, over torch.distributed (gloo on the CPU, nccl with GPUs).

Each worker actor holds a shard: its share of the attention heads (the q/k/v columns of
``c_attn`` and the matching input rows of ``c_proj``) and of the MLP's hidden units
(Megatron's column-then-row split), and its share of the KV cache. A step is one call to
every worker with the step's token ids and block tables; the workers reduce the two
output projections with ``all_reduce`` and rank 0 returns the logits. The scheduler,
block tables and sampling stay in the engine, which owns no weights. vLLM does the same
with its Ray executor (``distributed_executor_backend="ray"``); raylite's runs on actors
of the public core API, placed in the caller's placement group when there is one.
"""

from __future__ import annotations

import copy
import socket

import torch

import raylite
from raylite.llm._private.models import step_logits


def shard_gpt2(module: torch.nn.Module, rank: int, world: int) -> torch.nn.Module:
    """A copy of a GPT-2 shaped ``module`` with only rank's heads and MLP columns."""
    from raylite.llm._private.gpt import GPT

    if not isinstance(module, GPT):
        raise ValueError("tensor parallelism is implemented for raylite's GPT")
    cfg = module.config
    if cfg.n_head % world:
        raise ValueError(f"n_head={cfg.n_head} is not divisible by "
                         f"tensor_parallel_size={world}")
    m = copy.deepcopy(module)
    d = cfg.n_embd
    part = d // world
    cols = slice(rank * part, (rank + 1) * part)
    hid = 4 * d // world
    hcols = slice(rank * hid, (rank + 1) * hid)
    for blk in m.transformer.h:
        a, mlp = blk.attn, blk.mlp
        w, b = a.c_attn.weight.data, a.c_attn.bias
        idx = torch.cat([torch.arange(d)[cols] + k * d for k in range(3)])
        a.c_attn = _linear(w[idx], None if b is None else b.data[idx])
        a.c_proj = _linear(a.c_proj.weight.data[:, cols], a.c_proj.bias)
        a.n_head = cfg.n_head // world
        mlp.c_fc = _linear(mlp.c_fc.weight.data[hcols],
                           None if mlp.c_fc.bias is None else mlp.c_fc.bias.data[hcols])
        mlp.c_proj = _linear(mlp.c_proj.weight.data[:, hcols], mlp.c_proj.bias)
    return m


def _linear(weight: torch.Tensor, bias) -> torch.nn.Linear:
    out_f, in_f = weight.shape
    lin = torch.nn.Linear(in_f, out_f, bias=bias is not None)
    lin.weight.data = weight.contiguous().clone()
    if bias is not None:
        lin.bias.data = (bias.data if hasattr(bias, "data") else bias).clone()
    return lin


class TPWorker:
    """One rank: a shard, its KV cache, its process group."""

    def __init__(self, module_ref, rank: int, world: int, max_model_len):
        self.rank, self.world = rank, world
        self._module = raylite.get(module_ref[0]) if isinstance(module_ref, list) \
            else module_ref
        self._max_len = max_model_len
        self.model = None
        self.kv = None

    def address(self) -> tuple[str, int]:
        node = raylite.get_runtime_context().get_node_id()
        host = next((n.get("NodeManagerAddress") for n in raylite.nodes()
                     if n.get("NodeID") == node), None) or "127.0.0.1"
        with socket.socket() as s:
            s.bind((host, 0))
            return host, s.getsockname()[1]

    def setup(self, addr: tuple[str, int]) -> dict:
        import torch.distributed as dist

        from raylite.llm._private.models import PagedGPT2

        gpus = raylite.get_runtime_context().get_accelerator_ids().get("GPU") or []
        use_cuda = torch.cuda.is_available() and bool(gpus)
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                init_method=f"tcp://{addr[0]}:{addr[1]}",
                                rank=self.rank, world_size=self.world)
        shard = shard_gpt2(self._module, self.rank, self.world).eval()
        if use_cuda:
            shard = shard.cuda()
        self._module = None
        self.model = PagedGPT2(shard, num_heads=shard.config.n_head // self.world,
                               max_model_len=min(self._max_len or 1 << 30,
                                                 shard.config.block_size),
                               all_reduce=dist.all_reduce)
        m = self.model
        return {"num_layers": m.num_layers, "num_heads": m.num_heads,
                "head_dim": m.head_dim, "vocab_size": m.vocab_size,
                "max_model_len": m.max_model_len, "dtype": str(m.dtype).split(".")[-1]}

    def allocate_kv(self, n_blocks: int, block_size: int) -> None:
        m = self.model
        shape = (n_blocks, block_size, m.num_kv_heads, m.head_dim)
        self.kv = [(torch.zeros(shape, dtype=m.dtype, device=m.device),
                    torch.zeros(shape, dtype=m.dtype, device=m.device))
                   for _ in range(m.num_layers)]

    def step(self, ids, pos, decode, prefill, rows, block_size, backend):
        logits = step_logits(self.model, ids, pos, decode, prefill, rows, self.kv,
                             block_size=block_size, backend=backend)
        return logits.cpu() if self.rank == 0 and logits is not None else None

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class TensorParallelModel:
    """The engine's view of a model split over ``world`` worker actors."""

    def __init__(self, module: torch.nn.Module, world: int, *, max_model_len=None,
                 num_cpus: float = 1.0, num_gpus: float | None = None):
        from raylite.util import get_current_placement_group
        from raylite.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if not raylite.is_initialized():
            raylite.init()
        ref = raylite.put(module.cpu())
        pg = get_current_placement_group()
        cls = raylite.remote(TPWorker)
        self.workers = []
        for rank in range(world):
            opts = {"num_cpus": num_cpus}
            if num_gpus:
                opts["num_gpus"] = num_gpus
            if pg is not None:
                index = rank + 1 if pg.bundle_count > world else -1
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=index)
            self.workers.append(cls.options(**opts).remote([ref], rank, world,
                                                           max_model_len))
        addr = raylite.get(self.workers[0].address.remote())
        info = raylite.get([w.setup.remote(addr) for w in self.workers])[0]
        self.num_layers = info["num_layers"]
        self.num_heads = self.num_kv_heads = info["num_heads"]
        self.head_dim = info["head_dim"]
        self.vocab_size = info["vocab_size"]
        self.max_model_len = info["max_model_len"]
        self.dtype = getattr(torch, info["dtype"])
        self.device = torch.device("cpu")  # where the engine samples

    def allocate_kv(self, n_blocks: int, block_size: int):
        raylite.get([w.allocate_kv.remote(n_blocks, block_size) for w in self.workers])
        return None

    def step_logits(self, ids, pos, decode, prefill, rows, _kv, *, block_size, backend):
        refs = [w.step.remote(ids, pos, decode, prefill, rows, block_size, backend)
                for w in self.workers]
        return raylite.get(refs)[0]

    def shutdown(self) -> None:
        try:
            raylite.get([w.close.remote() for w in self.workers], timeout=10)
        except Exception:  # noqa: BLE001 - a worker already gone
            pass
        for w in self.workers:
            raylite.kill(w)
        self.workers = []
