"""The streaming executor: runs a Dataset's plan block by block over tasks and actors.

For each source block the whole chain of stages is submitted at once (each stage's
output ref is the next one's argument, so blocks flow from task to task through the
object store without coming back to the caller), and at most ``window`` chains are in
flight: that bounds the store's use while keeping every CPU busy. Outputs are yielded as
``(block_ref, metadata)`` in completion order, or in input order with
``preserve_order``. Function stages run as tasks; a class stage runs in a pool of actors
(``concurrency`` of them) that lives as long as the execution.

Differences from Ray Data: no operator-level backpressure by object store bytes (the
window counts blocks), no autoscaling actor pools, no operator fusion across actors.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator

import raylite
from raylite.data._private import ops as O

log = logging.getLogger(__name__)


def _node_id() -> str | None:
    try:
        return raylite.get_runtime_context().get_node_id()
    except Exception:
        return None


def _read(src: O.Source):
    from raylite.data import block as B

    return B.from_batch(src.read(*src.args))


def _task_stage(ops: list, data):
    block = _read(data) if isinstance(data, O.Source) else data
    block = O.run_ops(ops, block)
    return block, O.meta_of(block, _node_id())


class _PoolWorker:
    """An actor of a class stage's pool: builds the user's class once, then maps blocks."""

    def __init__(self, op: O.Op):
        self.op = op
        self.fn = op.fn(*op.ctor_args, **op.ctor_kwargs)

    def ready(self) -> bool:
        return True

    def run(self, block):
        block = O.apply(self.op, block, self.fn)
        return block, O.meta_of(block, _node_id())


_remote_task = None
_remote_pool_cls = None


def _task_fn():
    global _remote_task
    if _remote_task is None:
        _remote_task = raylite.remote(_task_stage)
    return _remote_task


def _pool_cls():
    global _remote_pool_cls
    if _remote_pool_cls is None:
        _remote_pool_cls = raylite.remote(_PoolWorker)
    return _remote_pool_cls


class _ActorPool:
    def __init__(self, stage: O.Stage):
        op = stage.ops[0]
        args = dict(stage.remote_args)
        args.setdefault("num_cpus", 1)
        cls = _pool_cls().options(**args)
        self.actors = [cls.remote(op) for _ in range(op.pool_size())]
        self.pending = [[] for _ in self.actors]

    def submit(self, ref):
        """Send the block to the actor with the fewest unfinished blocks."""
        for i, refs in enumerate(self.pending):
            if refs:
                ready, rest = raylite.wait(refs, num_returns=len(refs), timeout=0)
                self.pending[i] = rest
        i = min(range(len(self.actors)), key=lambda j: len(self.pending[j]))
        block_ref, meta_ref = self.actors[i].run.options(num_returns=2).remote(ref)
        self.pending[i].append(meta_ref)
        return block_ref, meta_ref

    def close(self) -> None:
        for a in self.actors:
            try:
                raylite.kill(a)
            except Exception:
                pass
        self.actors = []


def _window(options, stages: list[O.Stage]) -> int:
    limits = getattr(options, "resource_limits", None)
    cpu = getattr(limits, "cpu", None) if limits is not None else None
    if cpu is None:
        try:
            cpu = raylite.cluster_resources().get("CPU", 1)
        except Exception:
            cpu = 1
        excl = getattr(options, "exclude_resources", None)
        if excl is not None and getattr(excl, "cpu", None):
            cpu -= excl.cpu
    per_task = max([s.remote_args.get("num_cpus", 1) or 0 for s in stages
                    if not s.actors] or [1]) or 1
    if cpu < per_task:
        log.warning("The dataset's tasks need %g CPU each but only %g CPU is left to data "
                    "(the rest is excluded or held by training workers): they wait until a "
                    "CPU frees up. Give the workers fewer CPUs or the cluster more.",
                    per_task, max(cpu, 0))
    n = max(1, int(cpu / per_task))
    conc = [s.concurrency for s in stages if not s.actors and isinstance(s.concurrency, int)]
    if conc:
        n = min(n, min(conc))
    pools = [O.Op.pool_size(s.ops[0]) for s in stages if s.actors]
    return max(2 * n, 2 * max(pools or [0]), 2)


def _task_options(stage: O.Stage, options) -> dict:
    args = dict(stage.remote_args)
    if getattr(options, "locality_with_output", False) and "scheduling_strategy" not in args:
        from raylite.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = _node_id()
        if node:
            args["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
    return dict(args, num_returns=2)


def execute(sources: list[O.Source], ops: list[O.Op], options=None
            ) -> Iterator[tuple[object, dict]]:
    """Yield ``(block_ref, meta)`` for every output block of the plan."""
    stages = O.stages(ops)
    if not stages and all(s.ref is not None for s in sources):
        for s in sources:
            yield s.ref, {"num_rows": s.num_rows, "node_id": None}
        return
    pools = {i: _ActorPool(s) for i, s in enumerate(stages) if s.actors}
    op_refs = {i: raylite.put(s.ops) for i, s in enumerate(stages) if not s.actors}
    task = _task_fn()
    preserve = bool(getattr(options, "preserve_order", False))
    window = _window(options, stages)

    def launch(src: O.Source):
        data = src.ref if src.ref is not None else src
        meta = None
        if src.ref is None and (not stages or stages[0].actors):
            data, meta = task.options(num_returns=2).remote([], src)
        for i, st in enumerate(stages):
            if st.actors:
                data, meta = pools[i].submit(data)
            else:
                data, meta = task.options(**_task_options(st, options)).remote(
                    op_refs[i], data)
        return data, meta

    inflight: collections.deque = collections.deque()
    todo = iter(sources)
    try:
        while True:
            while len(inflight) < window:
                src = next(todo, None)
                if src is None:
                    break
                inflight.append(launch(src))
            if not inflight:
                return
            if preserve:
                block_ref, meta_ref = inflight.popleft()
            else:
                metas = [m for _, m in inflight]
                ready, _ = raylite.wait(metas, num_returns=1)
                k = metas.index(ready[0])
                block_ref, meta_ref = inflight[k]
                del inflight[k]
            yield block_ref, raylite.get(meta_ref)
    finally:
        for p in pools.values():
            p.close()
