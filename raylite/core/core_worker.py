"""The CoreWorker: the part of every driver and worker that submits work and owns objects.

It follows Ray's ownership and worker-lease design:

- The process that submits a task *owns* its return objects: results come back straight
  from the worker to the owner's inbox, and other processes ask the owner for the value.
- To run tasks, the owner asks the head for a *lease* on a worker for a resource shape.
  Once granted, tasks flow owner -> worker and results worker -> owner with no other hop;
  a lease is kept while tasks of that shape keep coming and handed back when idle.
- Actor calls go straight from caller to the actor's worker, in submission order.

One IO thread reads the inbox (results, replies, object requests) and the head's event
stream; any thread may send (``Outbox`` is thread-safe), so submitting a task costs no
thread hop. All bookkeeping is guarded by one lock. A peer that stops reading slows its
producers down (``Outbox.throttle``, outside the lock: an actor call waits while the
actor's backlog is full) but never the IO thread.

This class is the facade that wires the concerns together, one part (a mixin over the
same object, as the head's parts) per module:

=====================  ===============================================================
``reference_table``    owned and borrowed objects, borrowers, escapes, frees
``object_reader``      put/get/wait, futures, pulls from other nodes
``task_manager``       the task table: results, retries, cancellation, lineage
``task_submitter``     normal tasks: leases, pipelining, stealing, backlog
                       (its pure policy: ``lease_policy``; the task builder: ``task_spec``)
``actor_submitter``    actor creation and calls: ordering, restarts, retries, limits
``streams``            streaming returns
``task_events``        task records for the state API, sent in batches
=====================  ===============================================================

What is left here: the sockets, the IO loop and its handler tables, requests to the head,
and shutdown.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from concurrent.futures import Future

import zmq

from raylite import exceptions as exc
from raylite.core import protocol as P
from raylite.core import store
from raylite.core.actor_submitter import ActorSubmitterPart
from raylite.core.object_reader import ObjectsPart
from raylite.core.object_ref import new_id
from raylite.core.outbox import Outbox
from raylite.core.reference_table import ReferencesPart
from raylite.core.streams import StreamsPart
from raylite.core.task_events import TaskEventsPart
from raylite.core.task_manager import TasksPart
from raylite.core.task_submitter import TaskSubmitterPart
from raylite.core.transport import Transport

log = logging.getLogger(__name__)

TICK_S = 0.02                # the IO loop's housekeeping period
HEARTBEAT_S = 1.0            # a driver's heartbeat to the head


class HeadDiedError(exc.RayliteSystemError):
    """The head process exited while we waited for it (e.g. its port was taken)."""


class CoreWorker(ReferencesPart, ObjectsPart, TasksPart, TaskSubmitterPart,
                 ActorSubmitterPart, StreamsPart, TaskEventsPart):
    """Submits tasks and actor calls, owns objects, resolves gets. One per process."""

    def __init__(self, head_addr: str, *, node_id: str, session: str, job_id: str,
                 host_dirs: dict | None = None, token: str | None = None,
                 bind_host: str = "127.0.0.1", mode: str = "driver", worker_id: str = "",
                 namespace: str = ""):
        self.head_addr = head_addr
        self.node_id = node_id
        self.session = session
        self.job_id = job_id
        self.mode = mode
        self.worker_id = worker_id
        self.namespace = namespace
        self.store_dir = store.node_dir(session, node_id)
        self.transport = Transport(token, bind_host)
        self.outbox = Outbox(self.transport)
        self.inbox, self.addr = self.transport.bind()
        host, port = head_addr.rsplit(":", 1)
        self.sub = self.transport.connect(f"{host}:{int(port) + 1}", zmq.SUB)
        for topic in (P.EV_ACTOR, P.EV_OWNER_DIED, P.EV_LOG, P.EV_NODE, P.EV_PING):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)  # not the state-API topics (widgets)
        self._lock = threading.RLock()
        self._requests: dict[bytes, Future] = {}
        self._init_references()
        self._init_objects()
        self._init_tasks()
        self._init_task_submitter()
        self._init_actor_submitter()
        self._init_streams()
        self._init_task_events()
        self.blocked_hook = None  # set by a worker: called around a blocking get
        self.cancel_hook = None   # set by a worker: cancels a running task
        self.steal_hook = None    # set by a worker: gives back tasks it has not started
        self.log_hook = None      # set by a driver: prints worker output
        self._stop = False
        self._last_tick = 0.0
        self._last_heartbeat = 0.0
        self._handlers = {
            P.TASK_DONE: self._on_task_done, P.STREAM_ITEM: self._on_stream_item,
            P.LEASE_GRANTED: self._on_lease_granted, P.WORKER_DIED: self._on_worker_died,
            P.WORKER_BLOCKED_NOTICE: self._on_worker_blocked, P.STOLEN: self._on_stolen,
            P.STEAL: self._on_steal, P.WAKE: lambda body, bufs: None,
            P.REPLY: self._on_reply, P.GET_OBJECT: self._on_get_object,
            P.OBJECT: self._on_object, P.CANCEL: self._on_cancel,
            P.ADD_BORROWER: self._on_add_borrower, P.REMOVE_BORROWER: self._on_remove_borrower,
        }
        self._event_handlers = {
            P.EV_ACTOR: self._on_actor_event, P.EV_OWNER_DIED: self._on_owner_died,
            P.EV_LOG: self._on_log, P.EV_NODE: self._on_node_event, P.EV_PING: self._on_ping,
        }
        self._io = threading.Thread(target=self._io_loop, name="raylite-io", daemon=True)
        self._io.start()
        self.outbox.never_block.add(self._io.ident)  # it reads the inbox: never throttled

    # ------------------------------------------------------------------ messaging
    def send_head(self, msg_type: bytes, body: dict) -> None:
        self.outbox.send(self.head_addr, P.encode(msg_type, body))

    def request_head(self, msg_type: bytes, body: dict, timeout: float | None = 30.0,
                     abort=None):
        """Send a request to the head and wait for its REPLY (giving up early when
        ``abort()`` turns true, e.g. the head process died)."""
        fut = self._new_request(body)
        self.send_head(msg_type, body)
        try:
            return self._await_reply(fut, msg_type, timeout, abort)
        finally:  # answered, timed out or interrupted: the request is not kept
            self._requests.pop(body["req_id"], None)

    def _await_reply(self, fut: Future, msg_type: bytes, timeout, abort):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 0.05 if abort is not None else None
            if deadline is not None:
                step = min(step or timeout, max(0.0, deadline - time.monotonic()))
            try:
                return fut.result(step)
            except TimeoutError:
                if abort is not None and abort():
                    raise HeadDiedError(f"the head at {self.head_addr} exited") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise exc.RayliteSystemError(
                        f"The head at {self.head_addr} did not answer {msg_type.decode()} "
                        f"within {timeout}s; is the cluster still running?") from None

    def _new_request(self, body: dict, callback=None) -> Future:
        req_id = new_id()
        fut = Future()
        if callback is not None:
            fut.add_done_callback(callback)
        self._requests[req_id] = fut
        body["req_id"] = req_id
        body["reply_to"] = self.addr
        return fut

    def _on_reply(self, body, _bufs) -> None:
        fut = self._requests.pop(body["req_id"], None)
        if fut is None:
            return
        if body.get("error") is not None:
            fut.set_exception(body["error"])
        else:
            fut.set_result(body.get("value"))

    def sync_events(self, timeout: float = 10.0) -> None:
        """Wait until the head's event stream reaches us (a SUB socket misses whatever is
        published before its connection completes: ZeroMQ's "slow joiner")."""
        nonce = new_id()
        fut: Future = Future()
        self._requests[nonce] = fut
        deadline = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < deadline:
            self.send_head(P.PING_EVENTS, {"nonce": nonce})
            try:
                fut.result(0.02)
            except TimeoutError:
                pass
        self._requests.pop(nonce, None)

    def _on_ping(self, body, _bufs) -> None:
        fut = self._requests.pop(body["nonce"], None)
        if fut is not None:
            fut.set_result(True)

    def _on_log(self, body, _bufs) -> None:
        if self.log_hook is not None:
            self.log_hook(body["lines"])

    # ------------------------------------------------------------------ the IO thread
    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        poller.register(self.sub, zmq.POLLIN)
        inbox, sub = self.inbox, self.sub
        while not self._stop:
            try:
                ready = dict(poller.poll(20))
            except zmq.ZMQError:
                break
            if inbox in ready:
                self._drain(inbox, self._handlers, routed=True)
            if sub in ready:
                self._drain(sub, self._event_handlers, routed=False)
            if self._releases:
                self._process_releases()
            now = time.monotonic()
            if now - self._last_tick > TICK_S:
                self._last_tick = now
                self._tick(now)

    def _drain(self, sock, handlers: dict, routed: bool) -> None:
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            try:
                mtype, body, bufs = P.decode(frames, routed)
            except P.InvalidMessage as e:
                log.warning("dropped an invalid message: %s", e)
                continue
            try:
                handler = handlers.get(mtype)
                if handler is None:
                    log.warning("unexpected message %r", mtype)
                    continue
                handler(body, bufs)
            except Exception:
                log.exception("error handling a message")

    def _tick(self, now: float) -> None:
        self._tick_leases(now)
        if self._held_actors:
            self._pump_held_actors()
        self._maybe_flush_task_events(now)
        if self.mode == "driver" and now - self._last_heartbeat > HEARTBEAT_S:
            self._last_heartbeat = now
            self.send_head(P.HEARTBEAT, {"job_id": self.job_id, "core_addr": self.addr})

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        self._stop = True
        self.outbox.send(self.addr, P.encode(P.WAKE, {}))
        self._io.join(timeout=1.0)
        self._return_all_leases()
        store.release_maps()
        self.outbox.close(linger_ms=500)  # only waits while messages are still unsent
        self.inbox.close(linger=0)
        self.sub.close(linger=0)
        self.transport.close(linger_ms=500)


def print_worker_lines(lines: list[str]) -> None:
    out = sys.stdout
    try:
        out.write("".join(line if line.endswith("\n") else line + "\n" for line in lines))
        out.flush()
    except Exception:
        pass
