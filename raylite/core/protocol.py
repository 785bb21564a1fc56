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
REQUEST_LEASE = b"request_lease"        # owner: req_id, reply_to, demand, strategy, selector, env
CANCEL_LEASE = b"cancel_lease"          # owner: req_id
LEASE_BACKLOG = b"lease_backlog"        # owner: req_id, backlog (tasks queued behind it)
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
CANCEL = b"cancel"                      # owner -> worker core inbox: task_id, force

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


def encode(msg_type: bytes, body: dict, buffers=()) -> list:
    """Build the frames of one message."""
    return [msg_type, _dumps(body, 5), *buffers]


def decode(frames: list, routed: bool = True) -> tuple[bytes, dict, list]:
    """Split received frames into (type, body, buffers); ``routed`` drops the identity."""
    if routed:
        frames = frames[1:]
    return bytes(frames[0]), _loads(frames[1]), frames[2:]
