"""A worker process: runs tasks for whoever holds its lease, or hosts one actor.

The main thread owns the *task inbox* and executes what arrives there, so a task costs
no thread hop inside the worker; the CoreWorker's IO thread handles everything else
(results of nested tasks, object requests, cancellation). Cancelling a running task
raises ``TaskCancelledError`` in it through SIGINT (which also interrupts ``sleep``).

Run: ``python -m raylite.core.worker`` with the RAYLITE_* environment set by the agent.
"""

from __future__ import annotations

import collections
import inspect
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import zmq

from raylite import exceptions as exc
from raylite.core import protocol as P
from raylite.core import runtime
from raylite.core import serialization as ser
from raylite.core.core_worker import CoreWorker
from raylite.core.object_ref import ObjectRef, new_id, reset_id_prefix, return_id
from raylite.core.osutil import die_with_parent
from raylite.core.task_spec import Dep

log = logging.getLogger("raylite.worker")


class Executor:
    def __init__(self, core: CoreWorker, sock: zmq.Socket):
        self.core = core
        self.sock = sock
        self.fns: dict[bytes, object] = {}
        self.fn_bytes: dict[bytes, bytes] = {}
        self.calls: collections.Counter = collections.Counter()  # of max_calls functions
        self.running: bytes | None = None
        self.running_owner: str | None = None
        self.cancel_requested: bytes | None = None
        # tasks the owner took back (stolen) or cancelled before they started: skipped
        # when read; ``started`` remembers recent starts so a late steal cannot win
        self.lock = threading.Lock()
        self.skip: set[bytes] = set()
        self.started: collections.OrderedDict = collections.OrderedDict()
        self.base_cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.actor_gpu_ids: tuple = ()
        self.actor_resources: dict = {}
        self.actor_pg = None
        self.actor = None
        self.actor_id = None
        self.pool = None
        self.loop = None
        self.async_sem = None
        self.async_tasks: dict[bytes, object] = {}  # async actor calls: tid -> task
        self.async_cancelled: set[bytes] = set()  # ... cancelled, whether begun or not
        # named concurrency groups: name -> a thread pool (threaded actor) or an
        # (event loop, semaphore) pair (async actor); the default group is the fields above
        self.group_pools: dict[str, ThreadPoolExecutor] = {}
        self.group_loops: dict[str, tuple] = {}
        self.main_thread = threading.current_thread()
        self.handlers = {P.EXECUTE: self.on_execute, P.ACTOR_CALL: self.on_actor_call,
                         P.BECOME_ACTOR: self.on_become_actor}

    def run(self) -> None:
        sock = self.sock
        while True:
            try:
                frames = sock.recv_multipart()
            except KeyboardInterrupt:
                continue
            except zmq.ZMQError:
                return
            try:
                _, handler, body, _ = P.route(frames, self.handlers, "a task inbox")
            except P.InvalidMessage as e:
                log.warning("worker: dropped an invalid message: %s", e)
                continue
            handler(body)

    # ------------------------------------------------------------------ helpers
    def load_fn(self, body: dict):
        fn_id = body["fn_id"]
        fn = self.fns.get(fn_id)
        if fn is None:
            extend_sys_path(body.get("sys_path"))
            raw = body.get("fn") or self.fn_bytes[fn_id]
            fn = self.fns[fn_id] = ser.loads_code(raw)
        return fn

    def begin(self, body: dict) -> bool:
        """Mark a task started unless it was stolen or cancelled first (main thread)."""
        tid = body["task_id"]
        with self.lock:
            if tid in self.skip:
                self.skip.discard(tid)
                if body.get("fn") is not None:
                    self.fn_bytes[body["fn_id"]] = body["fn"]
                return False
            self.started[tid] = None
            if len(self.started) > 10000:
                self.started.popitem(last=False)
            return True

    def steal(self, tids: list) -> list:
        """IO thread: give back the tasks of ``tids`` not started yet."""
        with self.lock:
            got = [t for t in tids if t not in self.started]
            self.skip.update(got)
        return got

    def set_devices(self, gpu_ids, resources) -> None:
        ctx = runtime.task_context
        ctx.gpu_ids = tuple(gpu_ids or ())
        ctx.resources = resources
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        elif self.base_cuda is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.base_cuda

    def resolve_args(self, body: dict):
        args, kwargs = self.core.read_desc(body["args"])
        deps = body.get("deps")
        if deps:
            values = [self.core.read_desc(d) for d in deps]

            def sub(v):
                return values[v.i] if isinstance(v, Dep) else v
            args = tuple(sub(a) for a in args)
            kwargs = {k: sub(v) for k, v in kwargs.items()}
        return args, kwargs

    def package(self, value, nret: int, tid: bytes) -> list:
        if nret == 1:
            values = [value]
        elif nret == 0:
            values = []
        else:
            values = list(value)
            if len(values) != nret:
                raise ValueError(f"The task declared num_returns={nret} but returned "
                                 f"{len(values)} values.")
        return [self.describe(v, return_id(tid, i)) for i, v in enumerate(values)]

    def describe(self, value, oid: bytes) -> tuple:
        return self.core.describe(value, oid)

    def reply(self, owner: str, body: dict) -> None:
        """Send a task's result to its owner, first waiting while the owner's backlog is
        full (back-pressure: an owner that does not read slows its workers down)."""
        body["t1"] = time.time()
        self.core.outbox.throttle(owner)
        self.core.outbox.send(owner, P.encode(P.TASK_DONE, body))

    def error_reply(self, tid: bytes, name: str, e: BaseException) -> dict:
        if isinstance(e, exc.TaskCancelledError):
            cancelled = exc.TaskCancelledError(tid.hex())
            return {"task_id": tid, "error": ser.error_descriptor(cancelled)}
        err = ser.task_error(name, e, os.getpid(), self.core.node_id)
        return {"task_id": tid, "error": ser.error_descriptor(err), "app_error": True,
                "error_msg": f"{type(e).__name__}: {e}"[:300]}

    def invoke(self, body: dict, fn, name: str) -> dict:
        """Run one call in this thread and build its TASK_DONE body."""
        t0 = time.time()
        reply = self._invoke(body, fn, name)
        reply["t0"] = t0
        return reply

    def _invoke(self, body: dict, fn, name: str) -> dict:
        tid = body["task_id"]
        ctx = runtime.task_context
        ctx.task_id = ctx.cancel_scope = tid
        if self.actor_id is None:
            self.set_devices(body.get("gpu_ids"), body.get("resources"))
            ctx.placement_group = body.get("placement_group")
        else:
            self.actor_context()
        try:
            if fn is None:
                fn = self.load_fn(body)
            args, kwargs = self.resolve_args(body)
            result = fn(*args, **kwargs)
            if body.get("stream"):
                return self.stream(body, result)
            return {"task_id": tid, "results": self.package(result, body["nret"], tid)}
        except BaseException as e:  # noqa: BLE001 - user code may raise anything
            return self.error_reply(tid, name, e)
        finally:
            ctx.task_id = ctx.cancel_scope = None

    def stream(self, body: dict, gen) -> dict:
        tid, owner = body["task_id"], body["owner"]
        count = 0
        try:
            for value in gen:
                self.stream_item(tid, owner, count, value)
                count += 1
        except BaseException as e:  # noqa: BLE001
            reply = self.error_reply(tid, body.get("name") or body.get("method"), e)
            reply["count"] = count
            return reply
        return {"task_id": tid, "count": count}

    async def stream_async(self, body: dict, agen) -> dict:
        """``stream`` for an async generator: each value goes out as soon as it is yielded
        (not once the generator is exhausted)."""
        import asyncio

        tid, owner = body["task_id"], body["owner"]
        count = 0
        try:
            async for value in agen:
                self.stream_item(tid, owner, count, value)
                count += 1
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, asyncio.CancelledError):
                e = exc.TaskCancelledError()
            reply = self.error_reply(tid, body.get("method"), e)
            reply["count"] = count
            return reply
        return {"task_id": tid, "count": count}

    def stream_item(self, tid: bytes, owner: str, index: int, value) -> None:
        desc = self.describe(value, return_id(tid, index + 1))
        self.core.outbox.throttle(owner)  # a generator outrunning its reader waits here
        self.core.outbox.send(owner, P.encode(P.STREAM_ITEM, {
            "task_id": tid, "index": index, "desc": desc}))

    # ------------------------------------------------------------------ tasks
    def on_execute(self, body: dict) -> None:
        if not self.begin(body):
            return
        tid, owner = body["task_id"], body["owner"]
        if body.get("fn") is not None:
            self.fn_bytes[body["fn_id"]] = body["fn"]
        runtime.task_context.job_id = body.get("job_id")
        with self.lock:
            self.running, self.running_owner = tid, owner
        try:
            reply = self.invoke(body, None, body["name"])
        except exc.TaskCancelledError as e:
            reply = self.error_reply(tid, body["name"], e)
        finally:
            with self.lock:
                self.running = None
                self.cancel_requested = None
        exiting = self.count_call(body)
        if exiting:
            reply["exiting"] = True  # the owner sends this worker nothing more
        self.reply(owner, reply)
        sys.stdout.flush()
        if exiting:
            self.exit()

    def count_call(self, body: dict) -> bool:
        """Count a call of a function with ``max_calls``; True once this worker has
        run it that many times (it then exits and a fresh worker takes over, as Ray)."""
        limit = body.get("max_calls")
        if not limit:
            return False
        self.calls[body["fn_id"]] += 1
        return self.calls[body["fn_id"]] >= limit

    def exit(self) -> None:
        """Leave now, after the replies sent so far are out: stopping the IO thread and
        terminating the ZeroMQ context waits for them (closing a socket alone does not)."""
        self.core.shutdown()
        os._exit(0)

    def on_blocked(self, blocked: bool) -> None:
        """Called around a blocking get: lend the CPU out (the head may start other
        work on it) and tell the owner, who takes back the tasks queued behind this one."""
        if threading.current_thread() is not self.main_thread or self.actor is not None \
                or self.running is None:
            return
        core = self.core
        body = {"worker_id": core.worker_id, "blocked": blocked}
        core.outbox.send(self.running_owner, P.encode(P.WORKER_BLOCKED_NOTICE, body))
        core.send_head(P.WORKER_BLOCKED, body)

    def cancel(self, tid: bytes, force: bool, reply_to: str) -> None:
        """IO thread: the owner cancels ``tid``. A task not started yet is skipped and
        answered at once; a running one gets TaskCancelledError (through SIGINT)."""
        with self.lock:
            if tid in self.async_tasks:  # an async actor call: on its loop, maybe not begun
                self.async_cancelled.add(tid)  # so it never begins (see submit_async)
                fut = self.async_tasks[tid]
                if fut is not None:  # it may be awaiting: interrupt it there
                    fut.get_loop().call_soon_threadsafe(fut.cancel)
                return
            if self.running == tid:
                if force:
                    os.kill(os.getpid(), signal.SIGKILL)
                self.cancel_requested = tid
                os.kill(os.getpid(), signal.SIGINT)
                return
            if tid in self.started:
                return  # finished already
            self.skip.add(tid)
        self.reply(reply_to, self.error_reply(tid, "", exc.TaskCancelledError()))

    def on_sigint(self, *_):
        if self.running is not None and self.cancel_requested == self.running:
            self.cancel_requested = None
            raise exc.TaskCancelledError(self.running.hex())

    # ------------------------------------------------------------------ actors
    def on_become_actor(self, body: dict) -> None:
        core = self.core
        self.actor_id = body["actor_id"]
        runtime.task_context.actor_id = self.actor_id
        runtime.task_context.job_id = body.get("job_id")
        self.actor_gpu_ids = tuple(body.get("gpu_ids") or ())
        self.actor_resources = body.get("resources") or {}
        self.actor_job_id = body.get("job_id")
        self.actor_pg = body.get("placement_group")
        runtime.task_context.placement_group = self.actor_pg
        self.set_devices(self.actor_gpu_ids, self.actor_resources)
        error = None
        try:
            extend_sys_path(body.get("sys_path"))
            cls = ser.loads_code(body["cls"])
            args, kwargs = core.read_desc(body["args"])
            args = tuple(self._get_if_ref(a) for a in args)
            kwargs = {k: self._get_if_ref(v) for k, v in kwargs.items()}
            meta = body["meta"]
            groups = meta.get("concurrency_groups") or {}
            if meta.get("is_async"):
                self.loop, self.async_sem = self.start_loop(body.get("max_concurrency") or 1000)
                self.group_loops = {g: self.start_loop(n, g) for g, n in groups.items()}
                self.actor = self.run_in_loop(lambda: cls(*args, **kwargs))
            else:
                self.actor = cls(*args, **kwargs)
                conc = body.get("max_concurrency") or 1
                if conc > 1 or groups:  # the main thread must stay free to read calls
                    self.pool = ThreadPoolExecutor(conc, thread_name_prefix="raylite-actor")
                self.group_pools = {g: ThreadPoolExecutor(n, thread_name_prefix=f"raylite-{g}")
                                    for g, n in groups.items()}
        except BaseException as e:  # noqa: BLE001
            err = ser.task_error(f"{body['meta'].get('class_name')}.__init__", e, os.getpid(),
                                 core.node_id)
            error = exc.ActorDiedError(
                f"The actor {body.get('name') or ''} died because its constructor failed:\n"
                f"{err.traceback_str}", self.actor_id.hex())
        core.send_head(P.ACTOR_READY, {"actor_id": self.actor_id, "error": error})
        sys.stdout.flush()

    def actor_context(self) -> None:
        """Fill this thread's task context for the actor (pool and loop threads too)."""
        ctx = runtime.task_context
        ctx.actor_id, ctx.job_id = self.actor_id, self.actor_job_id
        ctx.gpu_ids, ctx.resources = self.actor_gpu_ids, self.actor_resources
        ctx.placement_group = self.actor_pg

    def _get_if_ref(self, v):
        return self.core.get([v])[0] if isinstance(v, ObjectRef) else v

    def start_loop(self, concurrency: int, group: str = "") -> tuple:
        """An event loop on its own thread, and the semaphore that limits how many calls
        run on it: one for the default group of an async actor, one per named group."""
        import asyncio  # only async actors need it (it costs ~25 ms to import)

        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True,
                         name=f"raylite-actor-loop{'-' + group if group else ''}").start()
        return loop, asyncio.Semaphore(concurrency)

    def run_in_loop(self, fn):
        import asyncio

        async def call():
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result()

    def on_actor_call(self, body: dict) -> None:
        if not self.begin(body):
            return
        method = body["method"]
        if method == "__ray_terminate__":
            self.drain_calls()
            self.reply(body["owner"], {"task_id": body["task_id"],
                                       "results": self.package(None, body["nret"],
                                                               body["task_id"])})
            self.exit()
        if self.actor is None:
            return
        fn = getattr(self.actor, method, None)
        if fn is None:
            reply = self.error_reply(body["task_id"], method, AttributeError(
                f"{type(self.actor).__name__} has no method {method!r}"))
            self.reply(body["owner"], reply)
            return
        group = body.get("group")
        if group is not None and group not in self.group_loops and \
                group not in self.group_pools:
            self.reply(body["owner"], self.error_reply(body["task_id"], method, ValueError(
                f"{type(self.actor).__name__} has no concurrency group {group!r}")))
            return
        if self.loop is not None:
            loop, sem = self.group_loops.get(group) or (self.loop, self.async_sem)
            self.submit_async(body, fn, method, loop, sem)
        elif group is not None:
            self.group_pools[group].submit(self.run_call, body, fn, method)
        elif self.pool is not None:
            self.pool.submit(self.run_call, body, fn, method)
        else:
            self.run_call(body, fn, method)

    def drain_calls(self, timeout: float = 30.0) -> None:
        """Before a graceful exit: let the calls already running (in the actor's thread
        pool or event loop) finish and answer."""
        for pool in [self.pool, *self.group_pools.values()]:
            if pool is not None:
                pool.shutdown(wait=True)
        deadline = time.monotonic() + timeout
        while self.async_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def run_call(self, body: dict, fn, method: str) -> None:
        tid = body["task_id"]
        in_main = threading.current_thread() is self.main_thread
        if in_main:
            self.running, self.running_owner = tid, body["owner"]
        try:
            reply = self.invoke(body, fn, method)
        except exc.TaskCancelledError as e:
            reply = self.error_reply(tid, method, e)
        finally:
            if in_main:
                self.running = None
                self.cancel_requested = None
        self.reply(body["owner"], reply)
        sys.stdout.flush()

    def submit_async(self, body: dict, fn, method: str, loop, sem) -> None:
        import asyncio

        tid = body["task_id"]

        async def call():
            t0 = time.time()
            reply = await run()
            reply["t0"] = t0
            return reply

        async def run():
            async with sem:
                self.actor_context()
                runtime.task_context.task_id = tid
                try:
                    if tid in self.async_cancelled:  # cancelled before it began: a
                        raise asyncio.CancelledError  # cancel queued behind it comes late
                    args, kwargs = self.resolve_args(body)
                    result = fn(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                    if body.get("stream"):
                        if inspect.isasyncgen(result):
                            return await self.stream_async(body, result)
                        return self.stream(body, result)
                    return {"task_id": tid, "results": self.package(result, body["nret"], tid)}
                except asyncio.CancelledError:
                    return self.error_reply(tid, method, exc.TaskCancelledError())
                except BaseException as e:  # noqa: BLE001
                    return self.error_reply(tid, method, e)

        def done(fut):
            with self.lock:
                self.async_tasks.pop(tid, None)
                self.async_cancelled.discard(tid)
            try:
                reply = fut.result()
            except BaseException as e:  # noqa: BLE001 - cancelled before it started
                reply = self.error_reply(tid, method, exc.TaskCancelledError()
                                         if isinstance(e, asyncio.CancelledError) else e)
            self.reply(body["owner"], reply)

        def start():
            with self.lock:
                task = self.async_tasks[tid] = loop.create_task(call())
            task.add_done_callback(done)
        with self.lock:
            self.async_tasks[tid] = None  # a cancel from now on finds it (see cancel)
        loop.call_soon_threadsafe(start)


def extend_sys_path(paths) -> None:
    """Add the submitter's import path (as Ray ships the driver's), so code it imports
    from its own directories unpickles here."""
    for path in paths or ():
        if path not in sys.path:
            sys.path.append(path)


def main(forked: bool = False) -> None:
    if forked:
        reset_id_prefix()
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
    die_with_parent(signal.SIGKILL)
    env = os.environ
    core = CoreWorker(env["RAYLITE_HEAD"], node_id=env["RAYLITE_NODE_ID"],
                      session=env["RAYLITE_SESSION"], job_id="", mode="worker",
                      worker_id=new_id().hex(), token=env.get("RAYLITE_TOKEN"),
                      bind_host=env.get("RAYLITE_BIND_HOST", "127.0.0.1"))
    runtime.core = core
    sock, addr = core.transport.bind()
    executor = Executor(core, sock)
    core.blocked_hook = executor.on_blocked
    core.cancel_hook = executor.cancel
    core.steal_hook = executor.steal
    signal.signal(signal.SIGINT, executor.on_sigint)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    core.send_head(P.REGISTER_WORKER, {
        "worker_id": core.worker_id, "node_id": core.node_id, "addr": addr,
        "core_addr": core.addr, "pid": os.getpid(), "env_key": env.get("RAYLITE_ENV_KEY", "")})
    executor.run()


if __name__ == "__main__":
    main()
