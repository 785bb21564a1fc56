"""Cross-node object transfer, run by the node agents.

A reader on node B that needs an object stored on node A asks B's agent to *pull* it.
The agent fetches the object file from A's agent in chunks (each chunk one ZeroMQ frame
sent without a copy), writes them into B's store, and answers every reader that asked
meanwhile: concurrent readers of one object cause one transfer, and later readers on B
find the local copy. Chunks are pipelined (a window of requests in flight).
"""

from __future__ import annotations

import collections
import logging
import os
import time

from raylite.core import protocol as P
from raylite.core import store

log = logging.getLogger(__name__)

CHUNK = 8 << 20
# a pull whose source sends nothing for this long fails (its node died or is cut off):
# readers get ObjectLostError within seconds, never a bare timeout minutes later
STALL_S = float(os.environ.get("RAYLITE_PULL_STALL_S", "10"))
WINDOW = 4
SERVED = 8  # object files kept mapped for the chunks still to come


class Pull:
    __slots__ = ("path", "src", "src_addr", "tmp", "fd", "size", "next_offset", "received",
                 "waiters", "last")

    def __init__(self, path: str, src: str, src_addr: str):
        self.path = path          # where the copy goes on this node
        self.src = src            # the object's path on the source node
        self.src_addr = src_addr  # the source node's agent
        self.tmp = path + ".pull"
        self.fd = None
        self.size = None
        self.next_offset = 0
        self.received = 0
        self.waiters: list[dict] = []
        self.last = time.monotonic()  # when the source was last heard from


class Transfers:
    """The pulling side (for this node's readers) and the serving side (for others)."""

    def __init__(self, agent):
        self.agent = agent
        self.pulls: dict[str, Pull] = {}
        self.completed = 0  # transfers finished (reported with heartbeats)
        self.mapped: collections.OrderedDict = collections.OrderedDict()  # path -> view

    # ------------------------------------------------------------------ pulling
    def on_pull(self, body: dict) -> None:
        local = os.path.join(self.agent.store_dir, os.path.basename(body["src_path"]))
        if not store.confined(self.agent.store_dir, local):
            log.warning("refused a pull of %r: not an object file name", body["src_path"])
            self._answer(body, local, f"{body['src_path']!r} is not an object of a store")
            return
        if os.path.exists(local):
            self._answer(body, local, None)
            return
        pull = self.pulls.get(local)
        if pull is None:
            pull = self.pulls[local] = Pull(local, body["src_path"], body["src_addr"])
            pull.waiters.append(body)
            self._request(pull)  # the first chunk tells the size; then a window
        else:
            pull.waiters.append(body)

    def _request(self, pull: Pull) -> None:
        offset = pull.next_offset
        pull.next_offset += CHUNK
        self.agent.outbox.send(pull.src_addr, P.encode(P.FETCH_CHUNK, {
            "path": pull.src, "offset": offset, "length": CHUNK, "dest": pull.path,
            "reply_to": self.agent.addr}))

    def check_stalled(self, now: float) -> None:
        for pull in list(self.pulls.values()):
            if now - pull.last > STALL_S:
                self._finish(pull, error=f"the node holding {os.path.basename(pull.src)} "
                             f"({pull.src_addr}) sent nothing for {STALL_S:g}s")

    def fail_all(self, why: str) -> None:
        for pull in list(self.pulls.values()):
            self._finish(pull, error=why)

    def on_chunk(self, body: dict, bufs: list) -> None:
        pull = self.pulls.get(body["dest"])
        if pull is None:
            return
        pull.last = time.monotonic()
        if body.get("error"):
            self._finish(pull, error=body["error"])
            return
        try:
            self._write_chunk(pull, body, bufs)
        except OSError as e:  # e.g. ENOSPC: this transfer fails, the node goes on
            log.warning("pull of %s failed: %s", pull.src, e)
            if pull.path in self.pulls:
                self._finish(pull, error=f"cannot store the copy on this node: {e}")

    def _write_chunk(self, pull: Pull, body: dict, bufs: list) -> None:
        if pull.fd is None:
            pull.size = body["size"]
            # a pooled file's pages exist already: writing them is about twice as fast
            reused = pull.size >= store.RECYCLE_MIN and \
                store.take_free(self.agent.store_dir, pull.size, pull.tmp)
            pull.fd = os.open(pull.tmp, os.O_CREAT | os.O_WRONLY | (0 if reused else os.O_TRUNC),
                              0o600)
            os.ftruncate(pull.fd, pull.size)
            while pull.next_offset < pull.size and \
                    (pull.next_offset - body["offset"]) // CHUNK < WINDOW:
                self._request(pull)
        data = bufs[0] if bufs else b""
        store.pwrite_all(pull.fd, data, body["offset"])
        pull.received += len(data)
        if pull.received >= pull.size:
            os.close(pull.fd)
            pull.fd = None
            os.rename(pull.tmp, pull.path)
            self.completed += 1
            self._finish(pull)
        elif pull.next_offset < pull.size:
            self._request(pull)

    def _finish(self, pull: Pull, error: str | None = None) -> None:
        del self.pulls[pull.path]
        if pull.fd is not None:
            os.close(pull.fd)
            pull.fd = None
        if error is not None:
            store.delete(pull.tmp)
        for body in pull.waiters:
            self._answer(body, pull.path, error)

    def _answer(self, body: dict, local: str, error: str | None) -> None:
        reply = {"req_id": body["req_id"], "value": None if error else local,
                 "error": FileNotFoundError(error) if error else None}
        self.agent.outbox.send(body["reply_to"], P.encode(P.REPLY, reply))

    # ------------------------------------------------------------------ serving
    def on_fetch_chunk(self, body: dict) -> None:
        """Send one chunk as a view of the mapped object file: ZeroMQ reads it from the
        mapping without a copy of ours."""
        path = body["path"]
        reply = {"dest": body["dest"], "offset": body["offset"]}
        if not store.confined(self.agent.store_dir, path):
            # only this node's object files are served, never another file of the machine
            log.warning("refused a chunk of %r: not an object of this node's store", path)
            reply["error"] = f"{path!r} is not an object of this node's store"
            self.agent.outbox.send(body["reply_to"], P.encode(P.CHUNK, reply))
            return
        view = self.mapped.pop(path, None)
        if view is None:
            try:
                view = store.map_object(path)
            except FileNotFoundError:
                reply["error"] = f"object file {path} is gone from its node"
                self.agent.outbox.send(body["reply_to"], P.encode(P.CHUNK, reply))
                return
        size = reply["size"] = view.nbytes
        end = min(size, body["offset"] + body["length"])
        if end < size:  # more chunks will come: keep it mapped (the last few objects)
            self.mapped[path] = view
            while len(self.mapped) > SERVED:
                self.mapped.popitem(last=False)
        self.agent.outbox.send(body["reply_to"], P.encode(P.CHUNK, reply,
                                                          [view[body["offset"]:end]]))
