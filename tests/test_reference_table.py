"""The reference table (raylite.core.reference_table) on its own: no cluster, no sockets.

A ``Table`` is the part alone over a fake outbox that records what it would send.
"""

from __future__ import annotations

import threading

import pytest

from raylite import exceptions as rexc
from raylite.core import protocol as P
from raylite.core import serialization as ser
from raylite.core.object_ref import ObjectRef, new_id
from raylite.core.reference_table import Entry, ReferencesPart

pytestmark = pytest.mark.timeout(10)

ME = "tcp://127.0.0.1:1001"
OWNER = "tcp://127.0.0.1:1002"
BORROWER = "tcp://127.0.0.1:1003"


class Outbox:
    def __init__(self):
        self.sent: list[tuple[str, bytes, dict]] = []
        self.forgotten: list[str] = []

    def send(self, addr: str, frames: list) -> None:
        mtype, body, _ = P.decode(frames, routed=False)  # what we send validates
        self.sent.append((addr, mtype, body))

    def forget(self, addr: str) -> None:
        self.forgotten.append(addr)


class Table(ReferencesPart):
    addr = ME
    node_id = "n1"

    def __init__(self):
        self._lock = threading.RLock()
        self.outbox = Outbox()
        self._lineage: dict = {}
        self.ended: list[bytes] = []
        self._init_references()

    def _end_actor(self, actor_id: bytes) -> None:
        self.ended.append(actor_id)

    def owned(self, value=1) -> bytes:
        """An object owned here with an inline value, as ``put`` makes it."""
        oid = new_id()
        entry = self._objects[oid] = Entry(None)
        entry.desc = ("i", ser.serialize(value).meta, [])
        return oid

    def drop(self, oid: bytes) -> None:
        self.remove_local_ref(oid)
        self._process_releases()

    def sent(self, mtype: bytes) -> list[tuple[str, dict]]:
        return [(a, b) for a, t, b in self.outbox.sent if t == mtype]


def test_an_owned_object_is_freed_with_its_last_local_ref():
    t = Table()
    oid = t.owned()
    t._lineage[oid[:16]] = "its task"
    t.add_local_ref(oid, ME)
    t.add_local_ref(oid, ME)
    t.drop(oid)
    assert oid in t._objects
    t.drop(oid)
    assert oid not in t._objects and oid[:16] not in t._lineage


def test_object_refs_count_themselves():
    t = Table()
    oid = t.owned()
    ref = ObjectRef(oid, ME, t)
    assert t._objects[oid].refs == 1
    del ref
    t._process_releases()
    assert oid not in t._objects


def test_a_pending_owned_object_is_not_freed_before_it_has_a_value():
    t = Table()
    oid = new_id()
    t._objects[oid] = Entry(None)  # a task's return, not computed yet
    t.add_local_ref(oid, ME)
    t.drop(oid)
    assert oid in t._objects  # kept for the result
    t._set_ready(oid, ("i", ser.serialize(2).meta, []))
    assert oid not in t._objects  # nobody wants it any more: freed on arrival


def test_borrowers_keep_an_object_until_they_let_go():
    t = Table()
    oid = t.owned()
    t._on_add_borrower({"oid": oid, "addr": BORROWER}, [])
    t.add_local_ref(oid, ME)
    t.drop(oid)
    assert oid in t._objects
    t._on_remove_borrower({"oid": oid, "addr": BORROWER}, [])
    assert oid not in t._objects


def test_a_dead_borrower_lets_go():
    t = Table()
    oid = t.owned()
    t._on_add_borrower({"oid": oid, "addr": BORROWER}, [])
    t._on_owner_died({"core_addr": BORROWER}, [])
    assert oid not in t._objects and BORROWER in t.outbox.forgotten


def test_an_escaped_object_stays():
    t = Table()
    oid = t.owned()
    ref = ObjectRef(oid, ME, t)
    t._mark_escaped([ref])
    del ref
    t._process_releases()
    assert t._objects[oid].escaped


def test_a_borrowed_ref_registers_with_its_owner_and_leaves():
    t = Table()
    oid = new_id()
    t.add_local_ref(oid, OWNER)
    t.add_local_ref(oid, OWNER)  # a second ref: no second registration
    assert t.sent(P.ADD_BORROWER) == [(OWNER, {"oid": oid, "addr": ME})]
    t.drop(oid)
    t.drop(oid)
    assert t.sent(P.REMOVE_BORROWER) == [(OWNER, {"oid": oid, "addr": ME})]
    assert oid not in t._objects


def test_a_borrowed_value_is_asked_for_once_and_woken_on_arrival():
    t = Table()
    oid = new_id()
    t.add_local_ref(oid, OWNER)
    entry = t._objects[oid]
    woken = []
    entry.callbacks.append(lambda: woken.append(entry.desc))
    t._request_borrowed(oid, entry)
    t._request_borrowed(oid, entry)
    assert t.sent(P.GET_OBJECT) == [(OWNER, {"oid": oid, "reply_to": ME})]
    desc = ("i", ser.serialize("v").meta, [])
    t._on_object({"oid": oid, "desc": desc}, [])
    assert woken == [desc] and entry.desc == desc


def test_borrowed_values_of_a_dead_owner_fail():
    t = Table()
    pending, later = new_id(), new_id()
    t.add_local_ref(pending, OWNER)
    t._request_borrowed(pending, t._objects[pending])
    t._on_owner_died({"core_addr": OWNER}, [])
    err = ser.deserialize(t._objects[pending].desc[1])
    assert isinstance(err, rexc.OwnerDiedError)
    t.add_local_ref(later, OWNER)  # seen after the death: nothing is sent to it
    t._request_borrowed(later, t._objects[later])
    assert isinstance(ser.deserialize(t._objects[later].desc[1]), rexc.OwnerDiedError)
    assert len(t.sent(P.ADD_BORROWER)) == 1 and len(t.sent(P.GET_OBJECT)) == 1


def test_the_owner_answers_borrowers_now_or_when_ready():
    t = Table()
    ready = t.owned("x")
    t._on_get_object({"oid": ready, "reply_to": BORROWER}, [])
    assert t.sent(P.OBJECT)[-1] == (BORROWER, {"oid": ready, "desc": t._objects[ready].desc})
    pending = new_id()
    t._objects[pending] = Entry(None)
    t.add_local_ref(pending, ME)
    t._on_get_object({"oid": pending, "reply_to": BORROWER}, [])
    assert len(t.sent(P.OBJECT)) == 1  # it waits for the value
    desc = ("i", ser.serialize(3).meta, [])
    t._set_ready(pending, desc)
    assert t.sent(P.OBJECT)[-1] == (BORROWER, {"oid": pending, "desc": desc})
    gone = new_id()
    t._on_get_object({"oid": gone, "reply_to": BORROWER}, [])
    err = ser.deserialize(t.sent(P.OBJECT)[-1][1]["desc"][1])
    assert isinstance(err, rexc.ObjectFreedError)


def test_the_last_handle_of_an_actor_ends_it():
    t = Table()
    actor_id = new_id()
    key = b"A" + actor_id
    entry = t._objects[key] = Entry(None)
    entry.desc = ("actor", actor_id)
    t.add_local_ref(key, ME)
    t.drop(key)
    assert t.ended == [actor_id]


def test_the_snapshot_leaves_actor_handle_counts_out():
    t = Table()
    oid = t.owned("v")
    t.add_local_ref(oid, ME)
    t._objects[b"A" + new_id()] = Entry(None)
    borrowed = new_id()
    t.add_local_ref(borrowed, OWNER)
    recs = {r["object_id"]: r for r in t.owned_objects()}
    assert set(recs) == {oid.hex(), borrowed.hex()}
    assert recs[oid.hex()]["location"] == "INLINE" and recs[oid.hex()]["ref_count"] == 1
    assert recs[oid.hex()]["owner"] == "this process"
    assert recs[borrowed.hex()] == {"object_id": borrowed.hex(), "size": None,
                                    "node_id": None, "location": "PENDING",
                                    "owner": OWNER, "ref_count": 1, "escaped": False}
