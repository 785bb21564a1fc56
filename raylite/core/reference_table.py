"""The reference table: the objects this process owns or borrows, who else holds them,
and when they are freed (Ray's reference counter, reduced to what raylite needs).

An :class:`Entry` per object id. Owned objects (``owner is None``) keep their value
descriptor here and answer GET_OBJECT from borrowers; they are freed (store file deleted,
or, for an actor's handle count, the actor ended) once no local ref, no borrower, no
waiter and no escape is left. Borrowed objects remember their owner, register with it
(ADD_BORROWER) when first seen and let go (REMOVE_BORROWER) when forgotten.

Local refs are counted by ``ObjectRef.__init__`` / ``__del__``: adding is immediate,
dropping queues the id (``__del__`` may run on any thread, inside the lock or not) and
the IO thread applies the queue. Everything else runs with the CoreWorker's lock held.
Part of the CoreWorker (``self`` is it); it needs ``addr``, ``outbox``, ``_lock``,
``_lineage`` (the task manager) and ``_end_actor`` (the actor submitter).
"""

from __future__ import annotations

import collections

from raylite import exceptions as exc
from raylite.core import protocol as P
from raylite.core import serialization as ser
from raylite.core import store
from raylite.core.object_ref import ObjectRef


class Entry:
    """An object this process owns or borrows."""

    __slots__ = ("desc", "waiters", "refs", "escaped", "owner", "requested", "callbacks",
                 "remote_waiters", "borrowers", "nested")

    def __init__(self, owner: str | None):
        self.desc = None
        self.waiters = []
        self.refs = 0
        self.escaped = False
        self.owner = owner  # None when owned here
        self.requested = False
        self.callbacks = []
        self.remote_waiters = []
        self.borrowers: set | None = None  # owned here: processes holding refs to it
        self.nested = None  # the ObjectRefs inside its value, kept alive as long as it is

    def unused(self) -> bool:
        """Nothing refers to it any more: it can be freed (owned) or forgotten."""
        return self.refs <= 0 and not self.escaped and not self.borrowers and \
            not self.remote_waiters and not self.callbacks


def describe_entry(oid: bytes, e: Entry) -> dict:
    """One entry as the state API's ``list_objects`` shows it."""
    desc = e.desc
    size, node, where = None, None, "PENDING"
    if desc is not None and desc[0] == "i":
        size = len(desc[1]) + sum(len(b) for b in desc[2])
        where = "INLINE"
    elif desc is not None and desc[0] == "s":
        size, node, where = desc[3], desc[1], "SHARED_MEMORY"
    elif desc is not None:
        where = "ERROR"
    return {"object_id": oid.hex(), "size": size, "node_id": node, "location": where,
            "owner": "this process" if e.owner is None else e.owner, "ref_count": e.refs,
            "escaped": e.escaped}


class ReferencesPart:
    """Reference counting, borrowers and frees (``self`` is the CoreWorker)."""

    def _init_references(self) -> None:
        self._objects: dict[bytes, Entry] = {}
        self._releases: collections.deque = collections.deque()
        self._dead_owners: set[str] = set()

    # ------------------------------------------------------------------ local refs
    def add_local_ref(self, oid: bytes, owner: str) -> None:
        entry = self._objects.get(oid)
        if entry is None:
            with self._lock:
                entry = self._objects.get(oid)
                if entry is None:
                    entry = self._new_entry(oid, owner)
        entry.refs += 1

    def _new_entry(self, oid: bytes, owner: str) -> Entry:
        """The entry of a ref first seen here (lock held). A borrowed ref registers this
        process with the owner, which keeps the object until every borrower lets go."""
        if owner == self.addr:
            entry = self._objects[oid] = Entry(None)
        else:
            entry = self._objects[oid] = Entry(owner)
            if owner not in self._dead_owners:
                self.outbox.send(owner, P.encode(P.ADD_BORROWER, {"oid": oid,
                                                                  "addr": self.addr}))
        return entry

    def remove_local_ref(self, oid: bytes) -> None:
        self._releases.append(oid)

    def _process_releases(self) -> None:
        with self._lock:
            while self._releases:
                oid = self._releases.popleft()
                entry = self._objects.get(oid)
                if entry is None:
                    continue
                entry.refs -= 1
                self._maybe_free(oid, entry)

    def _entry_for(self, ref: ObjectRef) -> Entry:
        """The entry of a ref, made if missing (a ref deserialised before this core
        existed, e.g. across a shutdown/init); lock held."""
        entry = self._objects.get(ref.id)
        if entry is None:
            entry = self._new_entry(ref.id, ref.owner)
            entry.refs += 1
        return entry

    def _mark_escaped(self, refs) -> None:
        """Refs serialised into a value that left this process: their objects stay until
        the process that holds them now lets go (lock held)."""
        for r in refs:
            e = self._objects.get(r.id)
            if e is not None:
                e.escaped = True

    def owned_objects(self) -> list[dict]:
        """A snapshot of the objects this process owns or borrows (state API records;
        actors' handle counts left out)."""
        with self._lock:
            entries = list(self._objects.items())
        return [describe_entry(oid, e) for oid, e in entries
                if not (len(oid) == 17 and oid[:1] == b"A")]

    # ------------------------------------------------------------------ frees
    def _maybe_free(self, oid: bytes, entry: Entry) -> None:
        """Free an owned object, or forget a borrowed one, once nothing refers to it
        (lock held)."""
        if not entry.unused() or (entry.desc is None and entry.owner is None):
            return
        del self._objects[oid]
        if entry.owner is not None:
            if entry.owner not in self._dead_owners:
                self.outbox.send(entry.owner, P.encode(P.REMOVE_BORROWER, {
                    "oid": oid, "addr": self.addr}))
            return
        self._free_desc(entry)
        self._lineage.pop(oid[:16], None)
        entry.nested = None  # the refs inside go now (their releases queue up)

    def _free_desc(self, entry: Entry) -> None:
        desc = entry.desc
        if entry.owner is None and desc is not None and desc[0] == "s":
            store.delete_everywhere(desc[2])
        elif desc is not None and desc[0] == "actor":
            self._end_actor(desc[1])

    # ------------------------------------------------------------------ values
    def _set_ready(self, oid: bytes, desc: tuple) -> None:
        """Record an object's value and wake whoever waits for it (lock held)."""
        entry = self._objects.get(oid)
        if entry is None:
            if desc[0] == "s" and desc[1] == self.node_id:
                store.delete(desc[2])
            return
        if entry.desc is not None:
            return
        entry.desc = desc
        for w in entry.waiters:
            w.notify()
        entry.waiters = []
        callbacks, entry.callbacks = entry.callbacks, []
        for cb in callbacks:
            cb()
        for reply_to in entry.remote_waiters:
            self.outbox.send(reply_to, P.encode(P.OBJECT, {"oid": oid, "desc": desc}))
        entry.remote_waiters = []
        if entry.owner is None and entry.unused():
            del self._objects[oid]
            self._free_desc(entry)

    def _request_borrowed(self, oid: bytes, entry: Entry) -> None:
        """Ask the owner for a borrowed object (lock held)."""
        if entry.requested or entry.desc is not None:
            return
        entry.requested = True
        if entry.owner in self._dead_owners:
            self._set_ready(oid, ser.error_descriptor(exc.OwnerDiedError(
                oid.hex(), f"The owner of object {oid.hex()} ({entry.owner}) died.")))
            return
        self.outbox.send(entry.owner, P.encode(P.GET_OBJECT, {"oid": oid, "reply_to": self.addr}))

    # ------------------------------------------------------------------ handlers
    def _on_get_object(self, body, _bufs) -> None:
        oid = body["oid"]
        with self._lock:
            entry = self._objects.get(oid)
            if entry is None or entry.owner is not None:
                desc = ser.error_descriptor(exc.ObjectFreedError(
                    oid.hex(), f"Object {oid.hex()} was freed by its owner or never existed."))
            elif entry.desc is None:
                entry.remote_waiters.append(body["reply_to"])
                return
            else:
                desc = entry.desc
        self.outbox.send(body["reply_to"], P.encode(P.OBJECT, {"oid": oid, "desc": desc}))

    def _on_object(self, body, _bufs) -> None:
        with self._lock:
            self._set_ready(body["oid"], body["desc"])

    def _on_add_borrower(self, body, _bufs) -> None:
        with self._lock:
            entry = self._objects.get(body["oid"])
            if entry is not None and entry.owner is None:
                if entry.borrowers is None:
                    entry.borrowers = set()
                entry.borrowers.add(body["addr"])

    def _on_remove_borrower(self, body, _bufs) -> None:
        with self._lock:
            oid = body["oid"]
            entry = self._objects.get(oid)
            if entry is not None and entry.borrowers:
                entry.borrowers.discard(body["addr"])
                self._maybe_free(oid, entry)

    def _on_owner_died(self, body, _bufs) -> None:
        """A process died: what we borrowed from it fails, what it borrowed from us is
        given back."""
        dead = body["core_addr"]
        with self._lock:
            self._dead_owners.add(dead)
            for oid, entry in list(self._objects.items()):
                if entry.owner == dead and entry.desc is None and entry.requested:
                    self._set_ready(oid, ser.error_descriptor(exc.OwnerDiedError(
                        oid.hex(), f"The owner of object {oid.hex()} ({dead}) died.")))
                elif entry.borrowers and dead in entry.borrowers:  # a borrower died
                    entry.borrowers.discard(dead)
                    self._maybe_free(oid, entry)
        self.outbox.forget(dead)
