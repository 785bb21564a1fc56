"""The wire protocol: every message type raylite sends, defined once.

A message is a ZeroMQ multipart message ``[type, body, *buffers]``: ``type`` is one of the
byte strings below, ``body`` a pickled dict (control data is small), ``buffers`` optional
raw frames that travel without a copy. Every process binds one ROUTER *inbox*; peers send
to it through a DEALER, so a ROUTER adds the sender's identity as a first frame, which
:func:`decode` drops (replies go to the ``reply_to`` address named in the body, never back
over the same connection).
"""

from __future__ import annotations

import pickle

VERSION = 1

# --- to the head --------------------------------------------------------------------
REGISTER_NODE = b"register_node"        # agent: node_id, addr, resources, labels, host, pid
HEARTBEAT = b"heartbeat"                # agent / driver: node_id or job_id, load
REGISTER_WORKER = b"register_worker"    # worker: worker_id, node_id, addr, core_addr, pid, env_key
WORKER_EXITED = b"worker_exited"        # agent: worker_id, code
RETIRE_IDLE = b"retire_idle"            # agent: node_id, pids -> those idle are replaced
REQUEST_LEASE = b"request_lease"        # owner: req_id, reply_to, demand, strategy, selector, env
CANCEL_LEASE = b"cancel_lease"          # owner: req_id
LEASE_BACKLOG = b"lease_backlog"        # owner: req_id, backlog (tasks queued), outstanding
RETURN_LEASE = b"return_lease"          # owner: worker_id
WORKER_BLOCKED = b"worker_blocked"      # worker: worker_id, blocked (bool)
CREATE_ACTOR = b"create_actor"          # owner: actor spec
ACTOR_READY = b"actor_ready"            # worker: actor_id, error (None when the constructor ran)
GET_ACTOR_INFO = b"get_actor_info"      # caller: actor_id or (name, namespace), reply_to
KILL_ACTOR = b"kill_actor"              # caller: actor_id, no_restart
REGISTER_DRIVER = b"register_driver"    # driver: job_id, core_addr, reply_to
DRIVER_EXIT = b"driver_exit"            # driver: job_id
CLUSTER_INFO = b"cluster_info"          # anyone: reply_to, req_id -> nodes, resources
SHUTDOWN = b"shutdown"                  # driver that started the cluster: stop everything
LOG = b"log"                            # agent: lines of worker output
PING_EVENTS = b"ping_events"            # anyone: nonce -> the head publishes EV_PING
GET_STATE = b"get_state"                # anyone: reply_to, req_id, sections -> state dict
TASK_EVENTS = b"task_events"            # owners / workers: events (batched task records)
REMOVE_NODE = b"remove_node"            # anyone: node_id -> mark dead now, stop its agent
AUTOSCALER_REPORT = b"autoscaler_report"  # autoscaler: status, decisions -> stored, published
CREATE_PG = b"create_pg"                # owner: placement group spec
REMOVE_PG = b"remove_pg"                # anyone: pg_id
GET_PG = b"get_pg"                      # anyone: pg_id, wait -> pg info once created/removed

# --- from the head ------------------------------------------------------------------
LEASE_GRANTED = b"lease_granted"        # to owner: req_id, worker_id, addr, core_addr, node_id
WORKER_DIED = b"worker_died"            # to lease owner: worker_id, reason
REPLY = b"reply"                        # generic answer: req_id, value / error
SPAWN_WORKER = b"spawn_worker"          # to agent: env_vars, env_key
KILL_WORKER = b"kill_worker"            # to agent: worker_id
BECOME_ACTOR = b"become_actor"          # to worker (task inbox): actor spec
REJOIN = b"rejoin"                      # to agent declared dead: node_id -> come back as it

# --- published by the head (PUB socket, topic = first frame) --------------------------
EV_ACTOR = b"actor"                     # actor_id, state, addr, core_addr, error
EV_OWNER_DIED = b"owner_died"           # core_addr of a process that died
EV_LOG = b"log"                         # lines of worker output
EV_NODE = b"node"                       # node_id, alive
EV_PING = b"ping"                       # nonce: proves a subscriber is connected
EV_TASK = b"task"                       # events: [task record, ...] (batched)
EV_PG = b"placement_group"              # placement group info (state changes)
EV_AUTOSCALER = b"autoscaler"           # status and the decisions with their reasons
EV_PENDING = b"pending"                 # a request no node can satisfy: demand, selector

# --- owner <-> worker, direct --------------------------------------------------------
EXECUTE = b"execute"                    # owner -> worker: task spec
ACTOR_CALL = b"actor_call"              # caller -> actor worker: method call spec
TASK_DONE = b"task_done"                # worker -> owner: task_id, results / error
STREAM_ITEM = b"stream_item"            # worker -> owner: task_id, index, value
WORKER_BLOCKED_NOTICE = b"blocked"      # worker -> lease owner: worker_id, blocked (bool)
STEAL = b"steal"                        # owner -> worker core inbox: task_ids not to start
STOLEN = b"stolen"                      # worker -> owner: worker_id, task_ids it will not start
CANCEL = b"cancel"                      # owner -> worker core inbox: task_id, force, recursive

# --- objects -------------------------------------------------------------------------
GET_OBJECT = b"get_object"              # borrower -> owner: oid, reply_to
OBJECT = b"object"                      # owner -> borrower: oid, value descriptor
PULL = b"pull"                          # reader -> its agent: src_path, src_addr, reply_to
FETCH_CHUNK = b"fetch_chunk"            # agent -> source agent: path, offset, length, dest
CHUNK = b"chunk"                        # source agent -> agent: dest, offset, size + frame
ADD_BORROWER = b"add_borrower"          # borrower -> owner: oid, addr (it holds a ref now)
REMOVE_BORROWER = b"remove_borrower"    # borrower -> owner: oid, addr (it let go)
WAKE = b"wake"                          # a process to its own inbox: wake the IO thread

_dumps = pickle.dumps
_loads = pickle.loads


# --- task records (state API, timeline): owners send them in batches (TASK_EVENTS) ----
# A record is a list, one slot per field below; a field an owner does not know yet is
# None and keeps what the head's table has.
TASK_RECORD_FIELDS = ("task_id", "name", "job_id", "actor_id", "submitted", "sent",
                      "node_id", "worker_id", "start", "end", "error", "attempts")
(TR_TASK_ID, TR_NAME, TR_JOB_ID, TR_ACTOR_ID, TR_SUBMITTED, TR_SENT, TR_NODE_ID,
 TR_WORKER_ID, TR_START, TR_END, TR_ERROR, TR_ATTEMPTS) = range(len(TASK_RECORD_FIELDS))


def task_record(task_id: bytes, name=None, job_id=None, actor_id=None,
                submitted=None) -> list:
    """A new task record (see TASK_RECORD_FIELDS)."""
    return [task_id, name, job_id, actor_id, submitted, None, None, None, None, None, None,
            None]


# --- validation ------------------------------------------------------------------------
# Every inbox is authenticated (transport.py): only holders of the cluster token reach it.
# What they send is still checked before a handler sees it, so a malformed message (a
# bug, a stale peer, a fuzzer with the token) is logged and dropped and never changes
# cluster state. The schema names each message's required fields ("?name": optional,
# checked when present and not None) and what each must be.

class InvalidMessage(ValueError):
    """A message that does not decode or does not match its schema."""


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x \
        and abs(x) != float("inf")


def _addr(x) -> bool:
    return isinstance(x, str) and x.startswith("tcp://") and len(x) < 300


def _resources(x) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and _finite(v) and v >= 0
                                       for k, v in x.items())


def _labels(x) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and isinstance(v, str)
                                       for k, v in x.items())


def _str_list(x) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(i, (str, bytes)) for i in x)


_ID = (bytes, str)
_NUM = _finite
_ANY = object

SCHEMA: dict[bytes, dict] = {
    REGISTER_NODE: {"node_id": str, "addr": _addr, "resources": _resources,
                    "?labels": _labels, "?host": str, "?pid": int, "?warm": int},
    HEARTBEAT: {"?node_id": str, "?job_id": str, "?transfers": int, "?store_used": int,
                "?store_capacity": int},
    REGISTER_WORKER: {"worker_id": str, "node_id": str, "addr": _addr, "core_addr": _addr,
                      "pid": int, "?env_key": str},
    WORKER_EXITED: {"node_id": str, "pid": int, "?env_key": str, "?reason": str},
    RETIRE_IDLE: {"node_id": str, "pids": lambda x: isinstance(x, list) and all(
        isinstance(p, int) for p in x)},
    REQUEST_LEASE: {"reply_to": _addr, "demand": _resources, "?env_vars": dict,
                    "?env_key": str, "?owner": _addr, "?strategy": (str, list, tuple),
                    "?label_selector": dict, "?backlog": int, "?outstanding": list},
    CANCEL_LEASE: {"req_id": _ANY},
    LEASE_BACKLOG: {"req_id": _ANY, "backlog": int, "?outstanding": list},
    RETURN_LEASE: {"worker_id": str},
    WORKER_BLOCKED: {"worker_id": str, "blocked": bool},
    CREATE_ACTOR: {"actor_id": bytes, "cls": bytes, "meta": dict, "demand": _resources,
                   "owner": _addr, "?name": str, "?namespace": str,
                   "?strategy": (str, list, tuple), "?label_selector": dict,
                   "?reply_to": _addr},
    ACTOR_READY: {"actor_id": bytes},
    GET_ACTOR_INFO: {"reply_to": _addr, "?actor_id": bytes, "?name": str,
                     "?namespace": str},
    KILL_ACTOR: {"actor_id": bytes},
    REGISTER_DRIVER: {"job_id": str, "core_addr": _addr, "reply_to": _addr,
                      "?expect_nodes": int},
    DRIVER_EXIT: {"job_id": str},
    CLUSTER_INFO: {"reply_to": _addr},
    SHUTDOWN: {},
    LOG: {"lines": _str_list},
    PING_EVENTS: {"nonce": _ANY},
    GET_STATE: {"reply_to": _addr, "?sections": _str_list, "?limit": int},
    TASK_EVENTS: {"records": lambda x: isinstance(x, list) and all(
        isinstance(r, list) and len(r) == len(TASK_RECORD_FIELDS) and
        isinstance(r[TR_TASK_ID], bytes) for r in x)},
    REMOVE_NODE: {"node_id": str},
    AUTOSCALER_REPORT: {"status": dict},
    CREATE_PG: {"pg_id": str, "bundles": lambda x: isinstance(x, list) and x and all(
        _resources(b) for b in x), "strategy": str, "?name": str},
    REMOVE_PG: {"pg_id": str},
    GET_PG: {"reply_to": _addr, "?pg_id": str, "?name": str},
    LEASE_GRANTED: {"req_id": _ANY},
    WORKER_DIED: {"worker_id": str},
    REPLY: {"req_id": _ANY},
    SPAWN_WORKER: {"?env_vars": dict, "?env_key": str},
    KILL_WORKER: {"?pid": int},
    BECOME_ACTOR: {"actor_id": bytes, "cls": bytes, "meta": dict},
    REJOIN: {"node_id": str},
    EXECUTE: {"task_id": bytes, "fn_id": _ANY, "owner": _addr, "name": str, "nret": _ANY},
    ACTOR_CALL: {"task_id": bytes, "method": str, "owner": _addr, "nret": _ANY},
    TASK_DONE: {"task_id": bytes},
    STREAM_ITEM: {"task_id": bytes, "index": int},
    WORKER_BLOCKED_NOTICE: {"worker_id": str, "blocked": bool},
    STEAL: {"task_ids": list, "reply_to": _addr},
    STOLEN: {"worker_id": str, "task_ids": list},
    CANCEL: {"task_id": bytes, "force": bool, "recursive": bool, "reply_to": _addr},
    GET_OBJECT: {"oid": bytes, "reply_to": _addr},
    OBJECT: {"oid": bytes},
    PULL: {"src_path": str, "src_addr": _addr, "reply_to": _addr},
    FETCH_CHUNK: {"path": str, "offset": int, "length": int, "dest": str,
                  "reply_to": _addr},
    CHUNK: {"dest": str, "offset": int},
    ADD_BORROWER: {"oid": bytes, "addr": _addr},
    REMOVE_BORROWER: {"oid": bytes, "addr": _addr},
    WAKE: {},
    # events (published by the head; EV_LOG is LOG's bytes)
    EV_ACTOR: {"actor_id": bytes},
    EV_OWNER_DIED: {"core_addr": str},
    EV_NODE: {"node_id": str, "alive": bool},
    EV_PING: {"nonce": _ANY},
    EV_TASK: {"events": list},
    EV_PG: {},
    EV_AUTOSCALER: {},
    EV_PENDING: {},
}


def _ok(spec, value) -> bool:
    if spec is _ANY:
        return True
    if isinstance(spec, type) or isinstance(spec, tuple):
        if spec is int or spec == (int,):
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, spec)
    return bool(spec(value))


def validate(msg_type: bytes, body) -> None:
    """Raise InvalidMessage unless ``body`` is a dict matching ``msg_type``'s schema."""
    schema = SCHEMA.get(msg_type)
    if schema is None:
        raise InvalidMessage(f"unknown message type {msg_type[:40]!r}")
    if not isinstance(body, dict):
        raise InvalidMessage(f"{msg_type.decode()}: body is a {type(body).__name__}, "
                             "not a dict")
    for key, spec in schema.items():
        if key[0] == "?":
            value = body.get(key[1:])
            if value is not None and not _ok(spec, value):
                raise InvalidMessage(f"{msg_type.decode()}: bad field {key[1:]!r}")
        elif key not in body or not _ok(spec, body[key]):
            raise InvalidMessage(f"{msg_type.decode()}: missing or bad field {key!r}")


def encode(msg_type: bytes, body: dict, buffers=()) -> list:
    """Build the frames of one message."""
    return [msg_type, _dumps(body, 5), *buffers]


def decode(frames: list, routed: bool = True) -> tuple[bytes, dict, list]:
    """Split received frames into (type, body, buffers); ``routed`` drops the identity.
    Raises InvalidMessage for frames that do not decode or validate."""
    if routed:
        frames = frames[1:]
    if len(frames) < 2:
        raise InvalidMessage(f"{len(frames)} frames; a message has a type and a body")
    msg_type = bytes(frames[0])
    if msg_type not in SCHEMA:
        raise InvalidMessage(f"unknown message type {msg_type[:40]!r}")
    try:
        body = _loads(frames[1])
    except Exception as e:
        raise InvalidMessage(f"{msg_type.decode()}: body does not unpickle ({e!r:.200})") \
            from None
    validate(msg_type, body)
    return msg_type, body, frames[2:]


def route(frames: list, handlers: dict, role: str, routed: bool = True):
    """Decode and validate a message for a process with these ``handlers``; returns
    (type, handler, body, buffers). Raises InvalidMessage for a malformed message or one
    of a type that ``role`` does not take (a peer with no business sending it)."""
    mtype, body, buffers = decode(frames, routed)
    handler = handlers.get(mtype)
    if handler is None:
        raise InvalidMessage(f"{mtype.decode()} is not a message for {role}")
    return mtype, handler, body, buffers
