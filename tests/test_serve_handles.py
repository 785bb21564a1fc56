"""Serve through handles: calls, composition, responses passed along, timeouts and
cancellation, streaming, routing among replicas, max_ongoing_requests, user_config,
redeploys, health checks, graceful shutdown, batching, status, failures."""

from __future__ import annotations

import asyncio
import os

import pytest
from fixtures import Signal

import raylite
from raylite import serve
from raylite.serve.exceptions import RayServeException, RequestCancelledError
from raylite.testing import wait_for_condition

pytestmark = pytest.mark.timeout(60)

NO_CPU = {"num_cpus": 0}


@serve.deployment(ray_actor_options=NO_CPU)
class Calc:
    def __init__(self, offset=0):
        self.offset = offset

    def __call__(self, x):
        return x + self.offset

    def double(self, x):
        return 2 * x

    async def pid(self):
        return os.getpid()

    def fail(self):
        raise KeyError("bad key")


def test_calls_methods_and_await(serve_url):
    h = serve.run(Calc.bind(10), name="calc", route_prefix=None)
    assert h.remote(1).result() == 11
    assert h.double.remote(4).result() == 8
    assert h.options(method_name="double").remote(5).result() == 10

    async def main():
        return await asyncio.gather(*[h.remote(i) for i in range(5)])
    assert asyncio.run(main()) == [10, 11, 12, 13, 14]
    with pytest.raises(KeyError):
        h.fail.remote().result()
    assert serve.get_app_handle("calc").remote(0).result() == 10
    assert serve.get_deployment_handle("Calc", "calc").double.remote(1).result() == 2
    with pytest.raises(RayServeException):
        serve.get_app_handle("nope")
    serve.delete("calc")
    assert "calc" not in serve.status().applications


def test_composition_and_responses_passed_into_calls(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    class Pipeline:
        def __init__(self, adder, doubler):
            self.adder, self.doubler = adder, doubler

        async def __call__(self, x):
            summed = self.adder.remote(x)               # not awaited: passed along
            return await self.doubler.double.remote(summed)

    app = Pipeline.bind(Calc.options(name="Adder").bind(1), Calc.options(name="Dbl").bind())
    h = serve.run(app, name="pipe", route_prefix=None)
    assert h.remote(3).result() == 8
    # from the driver too: a response as another call's argument
    adder = serve.get_deployment_handle("Adder", "pipe")
    dbl = serve.get_deployment_handle("Dbl", "pipe")
    assert dbl.double.remote(adder.remote(4)).result() == 10
    deps = serve.status().applications["pipe"].deployments
    assert set(deps) == {"Pipeline", "Adder", "Dbl"}
    serve.delete("pipe")


def test_result_timeout_and_cancel(serve_url):
    sig = Signal.remote()

    @serve.deployment(ray_actor_options=NO_CPU, max_ongoing_requests=1)
    class Waiter:
        def __init__(self, signal):
            self.signal = signal

        async def __call__(self):
            await self.signal.wait.remote()
            return "released"

    h = serve.run(Waiter.bind(sig), name="wait", route_prefix=None)
    running = h.remote()
    with pytest.raises(TimeoutError):
        running.result(timeout_s=0.2)
    queued = h.remote()  # max_ongoing_requests=1: waits in the router
    queued.cancel()
    with pytest.raises(RequestCancelledError):
        queued.result(timeout_s=5)
    running.cancel()
    with pytest.raises(RequestCancelledError):
        running.result(timeout_s=5)
    after = h.remote()
    sig.send.remote()
    assert after.result(timeout_s=10) == "released"
    serve.delete("wait")


def test_cancelling_a_request_cancels_the_requests_it_awaits(serve_url):
    """As in Ray Serve: a request cancelled while it awaits a handle's response (or
    iterates a stream) cancels that downstream request too."""

    @serve.deployment(ray_actor_options=NO_CPU)
    class Down:
        def __init__(self):
            self.seen = []

        async def __call__(self, tag):
            self.seen.append(f"{tag} started")
            try:
                await asyncio.Event().wait()
            finally:  # CancelledError arrives here
                self.seen.append(f"{tag} cancelled")

        async def stream(self, tag):
            yield "first"
            await self(tag)

        def events(self):
            return list(self.seen)

    @serve.deployment(ray_actor_options=NO_CPU)
    class Up:
        def __init__(self, down):
            self.down = down

        async def __call__(self, how):
            if how == "await":
                return await self.down.remote("awaited")
            return [x async for x in self.down.options(stream=True).stream.remote("streamed")]

    h = serve.run(Up.bind(Down.bind()), name="updown", route_prefix=None)
    down = serve.get_deployment_handle("Down", "updown")
    for how, tag in (("await", "awaited"), ("stream", "streamed")):
        r = h.remote(how)
        wait_for_condition(lambda t=tag: f"{t} started" in down.events.remote().result(),
                           timeout=10)
        r.cancel()
        wait_for_condition(lambda t=tag: f"{t} cancelled" in down.events.remote().result(),
                           timeout=10)
        with pytest.raises(RequestCancelledError):
            r.result(timeout_s=10)
    serve.delete("updown")


def test_streaming_through_a_handle(serve_url):
    sig = Signal.remote()

    @serve.deployment(ray_actor_options=NO_CPU)
    class Tokens:
        def __init__(self, signal):
            self.signal = signal

        async def __call__(self, n):
            for i in range(n):
                if i == 2:
                    await self.signal.wait.remote()
                yield f"t{i}"

        def sync_gen(self, n):
            yield from range(n)

    h = serve.run(Tokens.bind(sig), name="tok", route_prefix=None)
    gen = h.options(stream=True).remote(4)
    assert [next(gen), next(gen)] == ["t0", "t1"]  # before the replica finished
    sig.send.remote()
    assert list(gen) == ["t2", "t3"]

    async def consume():
        return [x async for x in h.options(stream=True, method_name="sync_gen").remote(3)]
    assert asyncio.run(consume()) == [0, 1, 2]
    with pytest.raises(TypeError, match="stream=True"):
        h.sync_gen.remote(2).result()
    serve.delete("tok")


def test_requests_spread_over_replicas_and_respect_max_ongoing(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU, num_replicas=2, max_ongoing_requests=2)
    class Worker:
        def __init__(self):
            self.now = self.peak = 0

        async def __call__(self):
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.05)
            self.now -= 1
            return os.getpid()

        def peak_seen(self):
            return self.peak

    h = serve.run(Worker.bind(), name="spread", route_prefix=None)
    pids = [r.result() for r in [h.remote() for _ in range(12)]]
    assert len(set(pids)) == 2  # both replicas served
    peaks = {h.peak_seen.remote().result() for _ in range(10)}
    assert max(peaks) <= 2
    serve.delete("spread")


def test_user_config_reaches_running_replicas(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU, user_config={"greeting": "hi"})
    class Configurable:
        def reconfigure(self, config):
            self.greeting = config["greeting"]

        def __call__(self):
            return self.greeting, os.getpid()

    h = serve.run(Configurable.bind(), name="conf", route_prefix=None)
    greeting, pid = h.remote().result()
    assert greeting == "hi"
    serve.run(Configurable.options(user_config={"greeting": "hello"},
                                   max_ongoing_requests=3).bind(), name="conf",
              route_prefix=None)
    wait_for_condition(lambda: h.remote().result()[0] == "hello")
    assert h.remote().result()[1] == pid  # reconfigured in place, not restarted
    serve.delete("conf")


def test_redeploying_new_code_replaces_replicas(serve_url):
    @serve.deployment(name="V", ray_actor_options=NO_CPU)
    class V1:
        def __call__(self):
            return "v1", os.getpid()

    @serve.deployment(name="V", ray_actor_options=NO_CPU)
    class V2:
        def __call__(self):
            return "v2", os.getpid()

    h = serve.run(V1.bind(), name="ver", route_prefix=None)
    _, pid1 = h.remote().result()
    h2 = serve.run(V2.bind(), name="ver", route_prefix=None)
    # serve.run returns once no replica of the old code serves: a handle made now sees v2
    version, pid2 = h2.remote().result()
    assert version == "v2" and pid2 != pid1
    # an older handle hears of the new replica set by long poll (as in Ray): soon, not
    # necessarily at once
    wait_for_condition(lambda: h.remote().result()[0] == "v2", timeout=10)
    wait_for_condition(lambda: serve.status().applications["ver"].deployments["V"]
                       .replica_states == {"RUNNING": 1})
    serve.delete("ver")


def test_failed_health_check_replaces_the_replica(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU, health_check_period_s=0.1,
                      health_check_timeout_s=2)
    class Sick:
        def __init__(self):
            self.sick = False

        def make_sick(self):
            self.sick = True

        def check_health(self):
            if self.sick:
                raise RuntimeError("not feeling well")

        def __call__(self):
            return os.getpid()

    h = serve.run(Sick.bind(), name="sick", route_prefix=None)
    pid = h.remote().result()
    h.make_sick.remote().result()
    wait_for_condition(lambda: h.remote().result(timeout_s=5) != pid, timeout=20,
                       message="a new replica replaced the unhealthy one")

    def recovered():
        dep = serve.status().applications["sick"].deployments["Sick"]
        return dep.status == "HEALTHY" and dep.replica_states == {"RUNNING": 1}
    wait_for_condition(recovered, timeout=20, message="the deployment is HEALTHY again "
                       "with one running replica")
    assert h.remote().result(timeout_s=5) != pid
    serve.delete("sick")


def test_graceful_shutdown_lets_requests_finish(serve_url):
    started = Signal.remote()

    @serve.deployment(ray_actor_options=NO_CPU, graceful_shutdown_timeout_s=10)
    class Slow:
        def __init__(self, started):
            self.started = started

        async def __call__(self):
            await self.started.send.remote()
            await asyncio.sleep(0.8)
            return "finished"

    h = serve.run(Slow.bind(started), name="grace", route_prefix=None)
    pending = h.remote()
    raylite.get(started.wait.remote(), timeout=10)  # the request runs on the replica
    serve.delete("grace")
    assert pending.result(timeout_s=10) == "finished"


def test_batching_with_a_batch_size_function(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU, max_ongoing_requests=50)
    class Batcher:
        def __init__(self):
            self.batches = []

        @serve.batch(max_batch_size=6, batch_wait_timeout_s=0.2,
                     batch_size_fn=lambda items: sum(len(s) for s in items))
        async def handle(self, items):
            self.batches.append(list(items))
            return [s.upper() for s in items]

        async def __call__(self, s):
            return await self.handle(s)

        def seen(self):
            return self.batches

    h = serve.run(Batcher.bind(), name="batch", route_prefix=None)
    words = ["aa", "bbb", "c", "dddd", "ee", "f", "ggg"]
    responses = [h.remote(w) for w in words]
    too_big = h.remote("xxxxxxx")  # 7 > 6: only this caller gets an error
    assert [r.result(timeout_s=10) for r in responses] == [w.upper() for w in words]
    with pytest.raises(ValueError, match="max_batch_size"):
        too_big.result(timeout_s=10)
    batches = h.seen.remote().result()
    assert sorted(w for b in batches for w in b) == sorted(words)
    assert all(sum(len(w) for w in b) <= 6 for b in batches)
    assert len(batches) < len(words)  # items were batched together
    serve.delete("batch")


def test_constructor_failure_fails_the_deploy(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    class Broken:
        def __init__(self):
            raise ValueError("cannot start")

    with pytest.raises(RuntimeError, match="cannot start"):
        serve.run(Broken.bind(), name="broken", route_prefix=None)
    assert serve.status().applications["broken"].status == "DEPLOY_FAILED"
    serve.delete("broken")


def test_replica_context_and_function_deployments(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    def who(x):
        ctx = serve.get_replica_context()
        return ctx.app_name, ctx.deployment, x

    h = serve.run(who.bind(), name="ctx", route_prefix=None)
    assert h.remote(7).result() == ("ctx", "who", 7)
    with pytest.raises(RayServeException):
        serve.get_replica_context()
    serve.delete("ctx")


def test_function_deployments_keep_their_bind_arguments(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    def scaled(factor, x, offset=0):
        return factor * x + offset

    h = serve.run(scaled.bind(10, offset=1), name="fbind", route_prefix=None)
    assert h.remote(2).result() == 21
    assert h.remote(2, offset=5).result() == 25  # a call's keywords win, as partial's

    @serve.deployment(ray_actor_options=NO_CPU)
    async def front(calc, x):  # an Application bound here is a handle in the replica
        return await calc.remote(x)

    h = serve.run(front.bind(Calc.bind(5)), name="fcompose", route_prefix=None)
    assert h.remote(1).result() == 6
    serve.delete("fbind")
    serve.delete("fcompose")


def test_handles_to_missing_or_deleted_deployments_fail(serve_url):
    from raylite.serve.exceptions import DeploymentUnavailableError

    with pytest.raises(DeploymentUnavailableError, match="does not exist"):
        serve.get_deployment_handle("Nope", "nowhere").remote().result(timeout_s=10)
    h = serve.run(Calc.bind(), name="gone", route_prefix=None)
    assert h.remote(1).result() == 1
    serve.delete("gone")
    with pytest.raises(DeploymentUnavailableError, match="deleted"):
        h.remote(1).result(timeout_s=10)


def test_a_killed_replica_is_replaced(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU, health_check_period_s=0.2)
    class Mortal:
        def __call__(self):
            return os.getpid()

        def die(self):
            os._exit(1)

    h = serve.run(Mortal.bind(), name="mortal", route_prefix=None)
    pid = h.remote().result()
    with pytest.raises(raylite.exceptions.RayActorError):
        h.die.remote().result(timeout_s=10)
    wait_for_condition(lambda: h.remote().result(timeout_s=5) != pid, timeout=20)
    serve.delete("mortal")
