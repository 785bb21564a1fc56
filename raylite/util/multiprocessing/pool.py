"""``multiprocessing.Pool`` on raylite actors (Ray: ``ray.util.multiprocessing.Pool``).

Each of the pool's *processes* is an actor (it runs ``initializer(*initargs)`` once, so
state set there is seen by the calls after it). Work is cut into chunks; a dispatcher
thread in the caller hands the chunks of the oldest unfinished call to actors with
room (two chunks in flight per actor, so one is ready to start when the other ends),
collects their results through ObjectRef futures, and fills in the call's result,
running ``callback``/``error_callback`` on that thread (as the standard library's
result handler does). Built only on the public core API.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import queue
import threading
import traceback

import raylite

__all__ = ["Pool", "AsyncResult", "IMapIterator", "TimeoutError"]

log = logging.getLogger(__name__)

TimeoutError = multiprocessing.TimeoutError  # noqa: A001 - the standard library's name
CHUNKS_PER_ACTOR = 2  # chunks in flight per actor


class RemoteTraceback(Exception):
    """The ``__cause__`` of an error raised in a pool's actor: its traceback there."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _picklable_error(e: BaseException) -> tuple:
    """The error and its traceback text (which pickling would drop; the caller sets
    it as the error's ``__cause__``, as the standard library does)."""
    import cloudpickle

    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        cloudpickle.loads(cloudpickle.dumps(e))
    except Exception:
        e = RuntimeError(f"{type(e).__name__}: {e} (the error could not be pickled)")
    return e, tb


class _PoolActor:
    """One of the pool's processes."""

    def __init__(self, initializer=None, initargs=None):
        if initializer is not None:
            initializer(*(initargs or ()))

    def run_batch(self, func, mode: str, items: list) -> list:
        """``[(ok, result or (error, traceback)), ...]`` for each item, so one failing
        item does not lose the others of its chunk."""
        out = []
        for item in items:
            try:
                if mode == "star":
                    value = func(*item)
                elif mode == "apply":
                    value = func(*item[0], **item[1])
                else:
                    value = func(item)
                out.append((True, value))
            except Exception as e:  # noqa: BLE001 - the caller gets it back
                out.append((False, _picklable_error(e)))
        return out


def _with_cause(error: BaseException, tb: str) -> BaseException:
    error.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return error


# ---------------------------------------------------------------------- results
class AsyncResult:
    """The result of ``apply_async``/``map_async``/``starmap_async`` (as the standard
    library's): ``get(timeout)``, ``wait(timeout)``, ``ready()``, ``successful()``."""

    def __init__(self, callback=None, error_callback=None):
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = True
        self._value = None

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call finished without an error; ValueError if not finished."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None):
        """The result, or the call's error raised; ``multiprocessing.TimeoutError``
        if it is not ready within ``timeout`` seconds."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    # called on the dispatcher thread
    def _finish(self, success: bool, value) -> None:
        self._success, self._value = success, value
        fn = self._callback if success else self._error_callback
        if fn is not None:
            try:
                fn(value)
            except Exception:
                log.exception("a pool callback failed")
        self._event.set()


class _ListResult(AsyncResult):
    """Collects the items of a map into one list; the first error to arrive wins, and
    the result is ready once every chunk is back (as the standard library)."""

    def __init__(self, single: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._single = single
        self._items: dict[int, object] = {}
        self._error = None

    def _put(self, index: int, ok: bool, value) -> None:
        if ok:
            self._items[index] = value
        elif self._error is None:
            self._error = value

    def _done(self, total: int) -> None:
        if self._error is not None:
            self._finish(False, self._error)
        elif self._single:
            self._finish(True, self._items[0])
        else:
            self._finish(True, [self._items[i] for i in range(total)])


class IMapIterator:
    """What ``imap``/``imap_unordered`` return: iterate it, or call ``next(timeout)``
    (``multiprocessing.TimeoutError`` when nothing comes in time). An item whose call
    failed raises its error where it is reached; the others still arrive."""

    def __init__(self, ordered: bool):
        self._ordered = ordered
        self._cond = threading.Condition()
        self._items: dict[int, tuple] = {}
        self._arrived: collections.deque = collections.deque()
        self._next = 0  # ordered: the index to yield next
        self._total = None  # known once the input is exhausted and all chunks are back

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def next(self, timeout: float | None = None):
        with self._cond:
            if not self._cond.wait_for(self._has_next_or_end, timeout):
                raise TimeoutError
            if self._ordered:
                if self._next not in self._items:
                    raise StopIteration
                ok, value = self._items.pop(self._next)
                self._next += 1
            else:
                if not self._arrived:
                    raise StopIteration
                ok, value = self._arrived.popleft()
        if not ok:
            raise value
        return value

    def _has_next_or_end(self) -> bool:
        if self._ordered:
            return self._next in self._items or self._total is not None
        return bool(self._arrived) or self._total is not None

    def _put(self, index: int, ok: bool, value) -> None:
        with self._cond:
            if self._ordered:
                self._items[index] = (ok, value)
            else:
                self._arrived.append((ok, value))
            self._cond.notify_all()

    def _done(self, total: int) -> None:
        with self._cond:
            self._total = total
            self._cond.notify_all()


class _Job:
    """One call's work: its input, cut into chunks as actors have room for them."""

    def __init__(self, func_ref, mode: str, iterable, chunksize: int, sink):
        self.func_ref = func_ref
        self.mode = mode
        self.items = iter(iterable)
        self.chunksize = max(1, chunksize)
        self.sink = sink
        self.next_index = 0
        self.exhausted = False
        self.outstanding = 0

    def next_chunk(self):
        """``(first index, items)`` of the next chunk, or None when the input is used
        up (read lazily: imap over a generator takes what the actors can work on)."""
        if self.exhausted:
            return None
        items = list(itertools.islice(self.items, self.chunksize))
        if len(items) < self.chunksize:
            self.exhausted = True
        if not items:
            return None
        start = self.next_index
        self.next_index += len(items)
        return start, items

    def finished(self) -> bool:
        return self.exhausted and self.outstanding == 0


# ---------------------------------------------------------------------- the pool
class Pool:
    """A process pool whose processes are raylite actors (as Ray's
    ``ray.util.multiprocessing.Pool``; the standard library's methods and semantics).

    ``processes`` defaults to the cluster's CPUs; each actor holds one CPU unless
    ``ray_remote_args`` (its ``.options()``) say otherwise. ``initializer(*initargs)``
    runs in each actor when it starts; ``maxtasksperchild`` replaces an actor after it
    ran that many chunks. ``context`` is accepted and ignored (as in Ray). If raylite is
    not initialised, the pool calls ``raylite.init(address=ray_address)`` (as Ray).
    Differences from the standard library: a ``with`` block ends with ``terminate()``
    as there, but results not read by then raise an error instead of hanging; an actor
    that dies fails the items of its chunks in flight with ``ActorDiedError`` and is
    replaced.
    """

    def __init__(self, processes: int | None = None, initializer=None, initargs=None,
                 maxtasksperchild: int | None = None, context=None,
                 ray_address: str | None = None, ray_remote_args: dict | None = None):
        if not raylite.is_initialized():
            raylite.init(address=ray_address)
        remote_args = {"num_cpus": 1, **(ray_remote_args or {})}
        cpus = int(raylite.cluster_resources().get("CPU", 0))
        if processes is None:
            processes = max(1, cpus)
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if remote_args["num_cpus"] and processes * remote_args["num_cpus"] > cpus:
            raise ValueError(f"Tried to start a pool of {processes} processes of "
                             f"{remote_args['num_cpus']} CPU each on a cluster with {cpus} "
                             "CPUs; pass fewer processes or ray_remote_args={'num_cpus': ...}")
        if maxtasksperchild is not None and maxtasksperchild < 1:
            raise ValueError("maxtasksperchild must be at least 1")
        self._processes = processes
        self._actor_cls = raylite.remote(_PoolActor).options(**remote_args)
        self._init = (initializer, initargs)
        self._max_tasks = maxtasksperchild
        self._actors = [self._new_actor() for _ in range(processes)]
        self._load = [0] * processes        # chunks in flight per actor
        self._ran = [0] * processes         # chunks sent to each actor
        self._jobs: collections.deque[_Job] = collections.deque()
        self._inflight: dict = {}           # ref -> (actor slot, job, first index, n)
        self._events: queue.Queue = queue.Queue()
        self._state = "RUN"                 # RUN -> CLOSE (no new work) / TERMINATE
        self._thread = threading.Thread(target=self._dispatch_loop, daemon=True,
                                        name="raylite-pool")
        self._thread.start()

    def _new_actor(self):
        return self._actor_cls.remote(*self._init)

    # ------------------------------------------------------------------ public API
    def apply(self, func, args: tuple = (), kwds: dict | None = None):
        """Run ``func(*args, **kwds)`` in one of the processes and return its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args: tuple = (), kwds: dict | None = None, callback=None,
                    error_callback=None) -> AsyncResult:
        """``apply`` without waiting: an :class:`AsyncResult`."""
        result = _ListResult(single=True, callback=callback, error_callback=error_callback)
        self._submit(func, "apply", [(tuple(args or ()), dict(kwds or {}))], 1, result)
        return result

    def map(self, func, iterable, chunksize: int | None = None) -> list:
        """``[func(x) for x in iterable]``, computed by the pool; raises the first error."""
        return self.map_async(func, iterable, chunksize).get()

    def map_async(self, func, iterable, chunksize: int | None = None, callback=None,
                  error_callback=None) -> AsyncResult:
        """``map`` without waiting: an :class:`AsyncResult` of the list."""
        return self._map_async(func, "map", iterable, chunksize, callback, error_callback)

    def starmap(self, func, iterable, chunksize: int | None = None) -> list:
        """``[func(*args) for args in iterable]``, computed by the pool."""
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(self, func, iterable, chunksize: int | None = None, callback=None,
                      error_callback=None) -> AsyncResult:
        """``starmap`` without waiting: an :class:`AsyncResult` of the list."""
        return self._map_async(func, "star", iterable, chunksize, callback, error_callback)

    def imap(self, func, iterable, chunksize: int = 1) -> IMapIterator:
        """An iterator of ``func(x)`` in input order, yielding each as it is ready; the
        input is read lazily, as actors have room for more."""
        sink = IMapIterator(ordered=True)
        self._submit(func, "map", iterable, chunksize, sink)
        return sink

    def imap_unordered(self, func, iterable, chunksize: int = 1) -> IMapIterator:
        """As :meth:`imap`, in the order the results finish."""
        sink = IMapIterator(ordered=False)
        self._submit(func, "map", iterable, chunksize, sink)
        return sink

    def close(self) -> None:
        """Accept no more work; what was submitted still runs (then :meth:`join`)."""
        if self._state == "RUN":
            self._state = "CLOSE"
            self._events.put(("wake",))

    def terminate(self) -> None:
        """Stop now: kill the actors; results not finished raise an error."""
        if self._state == "TERMINATE":
            return
        self._state = "TERMINATE"
        self._events.put(("terminate",))
        if threading.current_thread() is not self._thread:  # not from a callback
            self._thread.join()

    def join(self) -> None:
        """Wait until the work submitted before :meth:`close` is done and the actors
        have exited (ValueError if the pool still accepts work, as the standard
        library)."""
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.terminate()

    def __reduce__(self):
        raise TypeError("A pool cannot be passed to tasks or pickled (as in the standard "
                        "library); create it where it is used")

    # ------------------------------------------------------------------ submitting
    def _map_async(self, func, mode, iterable, chunksize, callback, error_callback):
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:  # as the standard library: about 4 chunks per process
            chunksize, extra = divmod(len(iterable), self._processes * 4)
            chunksize += bool(extra)
        result = _ListResult(callback=callback, error_callback=error_callback)
        self._submit(func, mode, iterable, chunksize or 1, result)
        return result

    def _submit(self, func, mode, iterable, chunksize, sink) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        # the function travels once per call, not once per chunk
        self._events.put(("job", _Job(raylite.put(func), mode, iterable, chunksize, sink)))

    # ------------------------------------------------------------------ dispatcher
    def _dispatch_loop(self) -> None:
        """The dispatcher thread: take events (new calls, chunks done, close,
        terminate) and keep the actors busy until the pool ends."""
        while True:
            event = self._events.get()
            kind = event[0]
            try:
                if kind == "job":
                    self._jobs.append(event[1])
                elif kind == "done":
                    self._chunk_done(event[1], event[2])
                elif kind == "terminate":
                    self._shutdown(kill=True)
                    return
                self._fill()
            except Exception as e:  # e.g. raylite was shut down under the pool
                log.exception("the pool's dispatcher failed; its unfinished work fails")
                self._state = "TERMINATE"
                self._shutdown(kill=True, error=e)
                return
            if self._state == "CLOSE" and not self._jobs and not self._inflight and \
                    self._events.empty():
                self._shutdown(kill=False)
                return

    def _room(self, slot: int) -> int:
        """How many more chunks the actor in ``slot`` may take now: one that ran
        ``maxtasksperchild`` chunks takes none until its last is back (then it is
        replaced)."""
        if self._max_tasks is not None and self._ran[slot] >= self._max_tasks and \
                self._load[slot]:
            return 0
        return CHUNKS_PER_ACTOR - self._load[slot]

    def _fill(self) -> None:
        """Give chunks to actors with room, oldest call first."""
        while self._jobs:
            slot = max(range(self._processes), key=self._room)
            if self._room(slot) <= 0:
                return
            job = self._jobs[0]
            chunk = job.next_chunk()
            if chunk is None:
                self._jobs.popleft()
                if job.finished():
                    job.sink._done(job.next_index)
                continue
            self._send(slot, job, *chunk)

    def _send(self, slot: int, job: _Job, start: int, items: list) -> None:
        if self._max_tasks is not None and self._ran[slot] >= self._max_tasks \
                and self._load[slot] == 0:
            self._actors[slot] = self._new_actor()  # the old one ends with its handle
            self._ran[slot] = 0
        actor = self._actors[slot]
        ref = actor.run_batch.remote(job.func_ref, job.mode, items)
        self._load[slot] += 1
        self._ran[slot] += 1
        job.outstanding += 1
        self._inflight[ref] = (slot, actor, job, start, len(items))
        # future callbacks may run on raylite's IO thread: only hand the event over
        ref.future().add_done_callback(lambda fut, ref=ref: self._events.put(
            ("done", ref, fut)))

    def _chunk_done(self, ref, fut) -> None:
        slot, actor, job, start, n = self._inflight.pop(ref)
        self._load[slot] -= 1
        try:
            answers = fut.result()
        except Exception as e:  # the actor died (or was killed): fail the chunk
            answers = [(False, e)] * n
            if isinstance(e, raylite.exceptions.RayActorError) and \
                    self._actors[slot] == actor:
                self._actors[slot] = self._new_actor()
                self._ran[slot] = 0
        else:
            answers = [(ok, v) if ok else (ok, _with_cause(*v)) for ok, v in answers]
        for i, (ok, value) in enumerate(answers):
            job.sink._put(start + i, ok, value)
        job.outstanding -= 1
        if job.finished() and job not in self._jobs:
            job.sink._done(job.next_index)

    def _shutdown(self, kill: bool, error: BaseException | None = None) -> None:
        """End the actors: killed now, or once the calls sent to them are done (and
        waited for, so ``join`` returns after they exit). With ``kill``, every
        unfinished call fails."""
        actors, self._actors = self._actors, []
        try:
            if not kill:
                ends = [a.__ray_terminate__.remote() for a in actors]
                raylite.wait(ends, num_returns=len(ends), timeout=30)
                return
            for actor in actors:
                raylite.kill(actor)
        except Exception:  # raylite was shut down first: its actors are gone already
            log.debug("ending a pool's actors failed", exc_info=True)
        error = error or RuntimeError("The pool was terminated before this result was ready")
        jobs: dict[int, _Job] = {id(j): j for j in self._jobs}
        for _, _, job, start, n in self._inflight.values():
            jobs[id(job)] = job
            for i in range(n):
                job.sink._put(start + i, False, error)
        for job in jobs.values():
            if not job.exhausted:  # the input was cut short here
                job.sink._put(job.next_index, False, error)
                job.next_index += 1
            job.sink._done(job.next_index)
        self._inflight.clear()
        self._jobs.clear()
