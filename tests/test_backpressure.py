"""Bounded socket queues with back-pressure (raylite.core.outbox), over real sockets and
real processes: a peer that stops reading keeps the sender's backlog bounded and blocks
its producer, loses nothing when it reads again, and frees everything when it dies."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import zmq

import raylite
from raylite import exceptions as exc
from raylite.core import runtime
from raylite.core.outbox import Outbox
from raylite.core.transport import Transport
from raylite.testing import wait_for_condition

pytestmark = pytest.mark.timeout(120)

HWM = 20       # messages each socket queues each way
LIMIT = 50     # messages a peer's backlog holds before producers block
PAYLOAD = b"x" * 20_000  # big enough that the kernel's TCP buffers hold few messages


@pytest.fixture
def small_queues(monkeypatch):
    """Tiny HWMs and backlog limit, for this process and the processes it starts."""
    monkeypatch.setenv("RAYLITE_SOCKET_HWM", str(HWM))
    monkeypatch.setenv("RAYLITE_SEND_BACKLOG", str(LIMIT))


@pytest.fixture
def raw_peer(small_queues):
    """An outbox and a raw ROUTER (the peer) that reads only when the test says so."""
    transport = Transport("bp-token")
    peer, addr = transport.bind()
    outbox = Outbox(transport)
    try:
        yield outbox, peer, addr
    finally:
        outbox.close(linger_ms=0)
        peer.close(linger=0)
        transport.close(linger_ms=0)


def _blocked(outbox) -> dict:
    """Wait until a producer is blocked by back-pressure (``outbox``: an Outbox, or a
    function returning its stats); returns that stats snapshot, checked: the backlog
    reached its limit (that is what blocks) and never went past it (one message per
    producer may land beyond: it checks before it sends)."""
    read = outbox if callable(outbox) else outbox.stats
    seen = []
    wait_for_condition(lambda: seen.append(read()) or seen[-1]["blocked"] == 1, timeout=60,
                       message="a producer is blocked by back-pressure")
    stats = seen[-1]
    assert LIMIT <= stats["peak"] <= LIMIT + 1 and stats["queued"] <= LIMIT + 1, stats
    return stats


def _produce(outbox: Outbox, addr: str, n: int, sent: list) -> threading.Thread:
    """A producer thread sending ``n`` numbered messages, throttled like raylite's own."""
    def run():
        for i in range(n):
            if not outbox.throttle(addr):
                sent.append("forgotten")
                return
            outbox.send(addr, [b"%d" % i, PAYLOAD])
            sent.append(i)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_backlog_stays_bounded_and_delivers_everything_in_order(raw_peer):
    outbox, peer, addr = raw_peer
    n = 2000
    sent: list = []
    producer = _produce(outbox, addr, n, sent)
    # the peer reads nothing: the producer ends up blocked, the backlog at its limit
    stats = _blocked(outbox)
    assert stats["queued"] == stats["peers"][addr] <= LIMIT + 1, stats
    assert len(sent) < n
    got = []
    while len(got) < n:  # the peer reads again: everything arrives, in order
        assert peer.poll(10_000), f"stalled after {len(got)} messages: {outbox.stats()}"
        _ident, num, body = peer.recv_multipart()
        got.append(int(num))
        assert body == PAYLOAD
    producer.join(10)
    assert not producer.is_alive()
    assert got == list(range(n))
    wait_for_condition(lambda: outbox.stats()["queued"] == 0)
    stats = outbox.stats()
    assert stats["peak"] <= LIMIT + 1 and stats["dropped"] == 0, stats


def test_forgetting_a_dead_peer_frees_its_backlog_and_wakes_the_producer(raw_peer):
    outbox, _peer, addr = raw_peer
    sent: list = []
    producer = _produce(outbox, addr, 5000, sent)
    _blocked(outbox)
    queued = outbox.stats()["queued"]
    assert 0 < queued <= LIMIT + 1
    outbox.forget(addr)  # what a process does when the head says the peer died
    producer.join(10)
    assert not producer.is_alive(), "the producer still waits on a dead peer"
    assert sent[-1] == "forgotten"
    stats = outbox.stats()
    assert stats["queued"] == 0 and stats["peers"] == {} and stats["dropped"] == queued


def test_forgetting_one_peer_leaves_the_others_flowing(raw_peer):
    """Peers are independent: with two peers full, forgetting one (its socket closed
    under the flusher's feet) neither stalls nor loses the other's messages."""
    outbox, peer, addr = raw_peer
    other, other_addr = outbox._transport.bind()
    try:
        sent: list = []
        dead: list = []
        producer = _produce(outbox, addr, 1000, sent)
        doomed = _produce(outbox, other_addr, 1000, dead)
        wait_for_condition(lambda: outbox.stats()["blocked"] == 2, timeout=30)
        outbox.forget(other_addr)
        doomed.join(10)
        assert dead[-1] == "forgotten"
        got = []
        while len(got) < 1000:
            assert peer.poll(10_000), f"stalled after {len(got)} messages: {outbox.stats()}"
            got.append(int(peer.recv_multipart()[1]))
        producer.join(10)
        assert got == list(range(1000)) and outbox.stats()["queued"] == 0
    finally:
        other.close(linger=0)


def test_backlog_is_bounded_in_bytes_too(small_queues, monkeypatch):
    monkeypatch.setenv("RAYLITE_SEND_BACKLOG_BYTES", str(10 * len(PAYLOAD)))
    transport = Transport("bp-token")
    peer, addr = transport.bind()
    outbox = Outbox(transport)
    try:
        sent: list = []
        producer = _produce(outbox, addr, 500, sent)
        seen = []
        wait_for_condition(lambda: seen.append(outbox.stats()) or seen[-1]["blocked"] == 1,
                           timeout=30)
        stats = seen[-1]  # blocked by 10 payloads' worth, long before LIMIT messages
        assert stats["peak"] <= 11 < LIMIT, stats
        assert stats["queued_bytes"] <= 11 * (len(PAYLOAD) + 10), stats
        got = 0
        while got < 500:
            assert peer.poll(10_000), f"stalled after {got} messages: {outbox.stats()}"
            peer.recv_multipart()
            got += 1
        producer.join(10)
        assert not producer.is_alive() and outbox.stats()["queued_bytes"] == 0
    finally:
        outbox.close(linger_ms=0)
        peer.close(linger=0)
        transport.close(linger_ms=0)


def test_every_socket_has_bounded_hwms(small_queues):
    transport = Transport("bp-token")
    try:
        inbox, addr = transport.bind()
        out = transport.connect(addr)
        sub = transport.connect(addr, zmq.SUB)
        for sock in (inbox, out):
            assert (sock.sndhwm, sock.rcvhwm) == (HWM, HWM)
        assert 0 < sub.rcvhwm and sub.sndhwm > 0  # the event stream: its own bound
        for sock in (inbox, out, sub):
            sock.close(linger=0)
    finally:
        transport.close(linger_ms=0)


class _Sink:
    def pid(self) -> int:
        return os.getpid()

    def take(self, i: int, payload: bytes) -> int:
        return i


Sink = raylite.remote(_Sink)
RestartableSink = raylite.remote(max_restarts=1)(_Sink)


@pytest.fixture
def stopped_actor(small_queues, request):
    """A cluster with one actor (a ``Sink``, or the class given by indirect
    parametrization) whose process is stopped (SIGSTOP); always resumed and stopped at
    the end."""
    raylite.init(num_cpus=1)
    pid = None
    try:
        a = getattr(request, "param", Sink).remote()
        pid = raylite.get(a.pid.remote())
        os.kill(pid, signal.SIGSTOP)
        yield a, pid
    finally:
        _resume(pid)
        raylite.shutdown()


def _resume(pid: int | None) -> None:
    """SIGCONT a process the test stopped (so that shutdown can stop it), if it lives."""
    if pid is not None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _call_many(a, n: int, refs: list) -> threading.Thread:
    def run():
        for i in range(n):
            refs.append(a.take.remote(i, PAYLOAD))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t




def test_stopped_actor_blocks_the_caller_and_gets_every_call_when_resumed(stopped_actor):
    a, pid = stopped_actor
    outbox = runtime.core.outbox
    n = 1500
    refs: list = []
    caller = _call_many(a, n, refs)
    stats = _blocked(outbox)
    assert len(refs) < n
    assert 0 < max(stats["peers"].values()) <= LIMIT + 1, stats
    os.kill(pid, signal.SIGCONT)
    caller.join(60)
    assert not caller.is_alive()
    assert raylite.get(refs, timeout=60) == list(range(n))
    stats = outbox.stats()
    assert stats["queued"] == 0 and stats["dropped"] == 0 and stats["peak"] <= LIMIT + 1


def test_actor_killed_while_stopped_frees_the_backlog_and_fails_the_calls(stopped_actor):
    a, pid = stopped_actor
    outbox = runtime.core.outbox
    refs: list = []
    caller = _call_many(a, 5000, refs)
    _blocked(outbox)
    os.kill(pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too
    caller.join(60)
    assert not caller.is_alive(), "the caller still waits on a dead actor"
    wait_for_condition(lambda: outbox.stats()["queued"] == 0, timeout=30)
    assert outbox.stats()["dropped"] > 0
    for ref in (refs[0], refs[len(refs) // 2], refs[-1]):
        with pytest.raises(exc.ActorDiedError):
            raylite.get(ref, timeout=30)


@raylite.remote
class Slow:
    def ready(self) -> None:
        pass

    def work(self, i: int, gate, payload: bytes) -> int:
        if i == 0:  # the first call holds up the rest: this sync actor reads no more
            raylite.get(gate.wait.remote())
        return i


def test_caller_far_ahead_of_a_slow_actor_waits_for_it(small_queues):
    """Not stopped, only busy: a sync actor reads its next call when it starts it, so a
    caller that outruns it is blocked, and goes on, losing nothing, once it catches up."""
    from raylite.testing import SignalActor

    raylite.init(num_cpus=1)
    try:
        gate = raylite.remote(num_cpus=0)(SignalActor).remote()
        a = Slow.remote()
        raylite.get(a.ready.remote())  # alive: calls go to its process, not its queue here
        n, refs = 1000, []

        def run():
            for i in range(n):
                refs.append(a.work.remote(i, gate, PAYLOAD))

        caller = threading.Thread(target=run, daemon=True)
        caller.start()
        _blocked(runtime.core.outbox)
        assert len(refs) < n
        raylite.get(gate.send.remote())
        caller.join(60)
        assert not caller.is_alive()
        assert raylite.get(refs, timeout=60) == list(range(n))
        assert runtime.core.outbox.stats()["peak"] <= LIMIT + 1
    finally:
        raylite.shutdown()


def _stats_reporter(path: str):
    """Start a thread writing this process's outbox counters to ``path`` every 20 ms,
    so the test sees a worker's back-pressure from outside (returns its stop event)."""
    import json

    outbox = runtime.core.outbox
    stop = threading.Event()

    def report():
        while not stop.wait(0.02):
            with open(path + ".tmp", "w") as f:
                json.dump(outbox.stats(), f)
            os.replace(path + ".tmp", path)

    threading.Thread(target=report, daemon=True).start()
    return stop


@raylite.remote
def produce(n: int, gate, stats_path: str):
    stop = _stats_reporter(stats_path)
    raylite.get(gate.wait.remote())
    try:
        for i in range(n):
            yield i, PAYLOAD
    finally:
        stop.set()


@raylite.remote(num_cpus=0)
class Consumer:
    def pid(self) -> int:
        return os.getpid()

    def start(self, n: int, gate, stats_path: str) -> None:
        """Submit the generator and return once it runs (its lease and EXECUTE are this
        process's to send: stopped before that, it would never start)."""
        self.gen = produce.options(num_returns="streaming").remote(n, gate, stats_path)
        wait_for_condition(lambda: os.path.exists(stats_path), timeout=30)

    def drain(self) -> list:
        return [raylite.get(ref)[0] for ref in self.gen]


def _read_stats(path) -> dict:
    import json

    with open(path) as f:
        return json.load(f)


def test_streaming_worker_waits_for_a_stopped_owner_and_loses_no_item(small_queues, tmp_path):
    """The owner of a streaming task (an actor) is stopped: the generator's worker blocks
    with a bounded backlog, and every item arrives, in order, once the owner resumes."""
    from raylite.testing import SignalActor

    raylite.init(num_cpus=2)
    pid = None
    try:
        gate = raylite.remote(num_cpus=0)(SignalActor).remote()
        c = Consumer.remote()
        pid = raylite.get(c.pid.remote())
        n, path = 1500, str(tmp_path / "producer.json")
        raylite.get(c.start.remote(n, gate, path))
        os.kill(pid, signal.SIGSTOP)  # the owner stops reading before the first item
        raylite.get(gate.send.remote())
        _blocked(lambda: _read_stats(path))
        os.kill(pid, signal.SIGCONT)
        assert raylite.get(c.drain.remote(), timeout=90) == list(range(n))
    finally:
        _resume(pid)
        raylite.shutdown()


@pytest.mark.parametrize("stopped_actor", [RestartableSink], indirect=True)
def test_actor_restarted_under_back_pressure_runs_the_calls_after_its_death(stopped_actor):
    """Killed while the caller is blocked, the actor restarts: the calls sent to the dead
    process fail (max_task_retries=0), every later one runs on the new process, in order,
    and the burst of calls queued meanwhile does not overfill the outbox either."""
    a, pid = stopped_actor
    outbox = runtime.core.outbox
    n, refs = 1500, []
    caller = _call_many(a, n, refs)
    _blocked(outbox)
    os.kill(pid, signal.SIGKILL)
    caller.join(60)
    assert not caller.is_alive()
    results = []
    for ref in refs:
        try:
            results.append(raylite.get(ref, timeout=60))
        except exc.ActorDiedError:
            results.append("died")
    first = next(i for i, r in enumerate(results) if r != "died")
    assert 0 < first < n and results[:first] == ["died"] * first
    assert results[first:] == list(range(first, n))
    assert raylite.get(a.pid.remote()) != pid
    assert outbox.stats()["peak"] <= LIMIT + 1, outbox.stats()
