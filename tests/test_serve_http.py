"""Serve over real HTTP: routing, errors, streaming, FastAPI ingress, back-pressure, and
the REST API (topology, external scaler, declarative config). The last test shuts Serve
down through the REST API."""

from __future__ import annotations

import os
import signal
import socket
import threading

import httpx
import pytest
from fixtures import Signal, send_then_drop

from raylite import serve
from raylite.testing import serve_auth_headers as AUTH
from raylite.testing import wait_for_condition

pytestmark = pytest.mark.timeout(60)

NO_CPU = {"num_cpus": 0}


def get(url, **kw):
    return httpx.get(url, timeout=10, **kw)


# ---------------------------------------------------------------- basics and routing


def test_values_become_responses(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    def as_json(request):
        return {"path": request.url.path, "q": dict(request.query_params)}

    @serve.deployment(ray_actor_options=NO_CPU)
    class Echo:
        async def __call__(self, request):
            body = await request.json()
            return f"got {body['x']}"

    serve.run(as_json.bind(), name="json", route_prefix="/json")
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    r = get(f"{serve_url}/json/sub?a=1")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"path": "/json/sub", "q": {"a": "1"}}
    r = httpx.post(f"{serve_url}/echo", json={"x": 42}, timeout=10)
    assert (r.status_code, r.text) == (200, "got 42")
    serve.delete("json")
    serve.delete("echo")


def test_longest_prefix_wins(serve_url):
    def make(tag):
        @serve.deployment(name=f"D{tag}", ray_actor_options=NO_CPU)
        def d(request):
            return tag
        return d

    serve.run(make("a").bind(), name="a", route_prefix="/a")
    serve.run(make("ab").bind(), name="ab", route_prefix="/a/b")
    assert get(f"{serve_url}/a").text == "a"
    assert get(f"{serve_url}/a/x").text == "a"
    assert get(f"{serve_url}/a/b").text == "ab"
    assert get(f"{serve_url}/a/b/c").text == "ab"
    r = get(f"{serve_url}/ab")  # not under "/a": no route
    assert r.status_code == 404 and "not found" in r.text
    serve.delete("ab")
    wait_for_condition(lambda: get(f"{serve_url}/a/b").text == "a")
    serve.delete("a")
    assert get(f"{serve_url}/a").status_code == 404
    assert get(f"{serve_url}/-/healthz").text == "success"


def test_same_prefix_for_two_apps_is_refused(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    def d(request):
        return "x"
    serve.run(d.bind(), name="p1", route_prefix="/same")
    with pytest.raises(ValueError, match="already used"):
        serve.run(d.bind(), name="p2", route_prefix="/same")
    serve.delete("p1")


def test_replica_error_is_a_500_with_its_text_and_the_proxy_stays_up(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    class Flaky:
        def __call__(self, request):
            if request.query_params.get("fail"):
                raise ValueError("boom from the replica")
            return "fine"

    serve.run(Flaky.bind(), name="flaky", route_prefix="/flaky")
    r = get(f"{serve_url}/flaky?fail=1")
    assert r.status_code == 500 and "boom from the replica" in r.text
    assert get(f"{serve_url}/flaky").text == "fine"
    serve.delete("flaky")


def test_malformed_requests_get_4xx(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    class Parse:
        async def __call__(self, request):
            return await request.json()

    serve.run(Parse.bind(), name="parse", route_prefix="/parse")
    r = httpx.post(f"{serve_url}/parse", content=b"{not json", timeout=10)
    assert r.status_code == 400 and "JSON" in r.text
    host, port = serve_url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert httpx.post(f"{serve_url}/parse", json=[1], timeout=10).json() == [1]
    serve.delete("parse")


# ---------------------------------------------------------------- streaming


def test_streaming_response_arrives_piece_by_piece(serve_url):
    sig = Signal.remote()

    @serve.deployment(ray_actor_options=NO_CPU)
    class Stream:
        def __init__(self, signal):
            self.signal = signal

        async def __call__(self, request):
            async def gen():
                yield "first\n"
                await self.signal.wait.remote()
                yield "second\n"
            from starlette.responses import StreamingResponse
            return StreamingResponse(gen(), media_type="text/plain")

    serve.run(Stream.bind(sig), name="stream", route_prefix="/stream")
    with httpx.stream("GET", f"{serve_url}/stream", timeout=10) as r:
        chunks = r.iter_text()
        assert next(chunks) == "first\n"  # before the generator may go on
        sig.send.remote()
        assert "".join(chunks) == "second\n"
    serve.delete("stream")


def test_generator_return_value_streams(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    def count(request):
        n = int(request.query_params["n"])
        return (f"{i}," for i in range(n))

    serve.run(count.bind(), name="count", route_prefix="/count")
    assert get(f"{serve_url}/count?n=5").text == "0,1,2,3,4,"
    serve.delete("count")


def test_a_body_made_before_the_proxy_reads_it_arrives_whole(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    async def burst(request):
        async def gen():  # never waits: the app is done before the rest is asked for
            for i in range(5):
                yield f"{i},"
        from starlette.responses import StreamingResponse
        return StreamingResponse(gen())

    serve.run(burst.bind(), name="burst", route_prefix="/burst")
    for _ in range(3):
        assert get(f"{serve_url}/burst").text == "0,1,2,3,4,"
    serve.delete("burst")


def test_a_client_that_disconnects_cancels_its_request(serve_url):
    """Ray Serve's behaviour: when the HTTP client goes away, the request is cancelled
    and the handler (or the generator making a streamed body) sees CancelledError."""
    import asyncio

    @serve.deployment(ray_actor_options=NO_CPU)
    class Watched:
        def __init__(self):
            self.seen = []

        async def __call__(self, request):
            from starlette.responses import StreamingResponse

            async def forever(tag):
                try:
                    self.seen.append(f"{tag} started")
                    await asyncio.Event().wait()
                finally:  # CancelledError arrives here
                    self.seen.append(f"{tag} cancelled")

            if request.url.path.endswith("/stream"):
                async def body():
                    yield "first\n"
                    await forever("stream")
                    yield "never\n"
                return StreamingResponse(body(), media_type="text/plain")
            await forever("call")

        def events(self):
            return list(self.seen)

    serve.run(Watched.bind(), name="watched", route_prefix="/watched")
    h = serve.get_deployment_handle("Watched", "watched")
    # a streamed body: read the first piece, then hang up
    send_then_drop(serve_url, b"GET /watched/stream HTTP/1.1\r\nHost: x\r\n\r\n",
                    until=b"first")
    wait_for_condition(lambda: "stream cancelled" in h.events.remote().result(),
                       timeout=10)
    # a plain call still running: hang up once the handler has started
    send_then_drop(serve_url, b"GET /watched/call HTTP/1.1\r\nHost: x\r\n\r\n",
                    before_close=lambda: wait_for_condition(
                        lambda: "call started" in h.events.remote().result(), timeout=10))
    wait_for_condition(lambda: "call cancelled" in h.events.remote().result(),
                       timeout=10)
    assert h.events.remote().result() == ["stream started", "stream cancelled",
                                          "call started", "call cancelled"]
    with httpx.stream("GET", f"{serve_url}/watched/stream", timeout=10) as r:
        assert next(r.iter_text()) == "first\n"  # the server keeps serving
    wait_for_condition(lambda: h.events.remote().result().count("stream cancelled") == 2,
                       timeout=10)
    serve.delete("watched")


# ---------------------------------------------------------------- FastAPI


def test_fastapi_ingress_with_class_based_routes(serve_url):
    from fastapi import FastAPI

    fapp = FastAPI()

    @serve.deployment(ray_actor_options=NO_CPU)
    @serve.ingress(fapp)
    class Api:
        def __init__(self):
            self.count = 0

        @fapp.get("/hello/{name}")
        def hello(self, name: str):
            self.count += 1
            return {"hello": name, "count": self.count}

        @fapp.post("/items")
        async def add(self, item: dict):
            return {"received": item}

    serve.run(Api.bind(), name="fa", route_prefix="/fa")
    assert get(f"{serve_url}/fa/hello/bob").json() == {"hello": "bob", "count": 1}
    assert get(f"{serve_url}/fa/hello/al").json()["count"] == 2
    r = httpx.post(f"{serve_url}/fa/items", json={"k": 1}, timeout=10)
    assert r.json() == {"received": {"k": 1}}
    assert get(f"{serve_url}/fa/nope").status_code == 404
    serve.delete("fa")


# ---------------------------------------------------------------- back-pressure


def test_full_queue_answers_503(serve_url):
    sig = Signal.remote()

    @serve.deployment(ray_actor_options=NO_CPU, max_ongoing_requests=1,
                      max_queued_requests=1)
    class Slow:
        def __init__(self, signal):
            self.signal = signal

        async def __call__(self, request):
            await self.signal.wait.remote()
            return "done"

    serve.run(Slow.bind(sig), name="slow", route_prefix="/slow")
    codes = []

    def call():
        codes.append(get(f"{serve_url}/slow").status_code)
    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    def load():
        d = serve.status().applications["slow"].deployments["Slow"]
        return d.ongoing_requests, d.queued_requests
    wait_for_condition(lambda: load() == (1, 1), message="one request running, one queued")
    r = get(f"{serve_url}/slow")  # one running, one queued: this one is refused
    assert r.status_code == 503 and "max_queued_requests" in r.text
    sig.send.remote()
    for t in threads:
        t.join(10)
    assert codes == [200, 200]
    serve.delete("slow")


# ---------------------------------------------------------------- REST API


def test_topology_in_the_rest_api(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    class Model:
        def __call__(self, x):
            return x * 2

    @serve.deployment(ray_actor_options=NO_CPU)
    class Extra:
        def __call__(self, x):
            return x + 1

    @serve.deployment(ray_actor_options=NO_CPU)
    class Ingress:
        def __init__(self, model):
            self.model = model  # a handle given at construction

        async def __call__(self, request):
            x = int(request.query_params["x"])
            extra = serve.get_deployment_handle("Extra", "extras")  # made at run time
            return await extra.remote(await self.model.remote(x))

    serve.run(Extra.bind(), name="extras", route_prefix=None)
    serve.run(Ingress.bind(Model.bind()), name="topo", route_prefix="/topo")
    assert get(f"{serve_url}/topo?x=3").text == "7"
    apps = get(f"{serve_url}/api/serve/applications/").json()["applications"]
    topo = apps["topo"]["deployment_topology"]
    assert topo["app_name"] == "topo" and topo["ingress_deployment"] == "Ingress"
    nodes = topo["nodes"]
    assert set(nodes) == {"Ingress", "Model"}
    assert nodes["Ingress"]["is_ingress"] and not nodes["Model"]["is_ingress"]
    assert nodes["Model"] == {"name": "Model", "app_name": "topo",
                              "outbound_deployments": [], "is_ingress": False}
    out = {(o["app_name"], o["name"]) for o in nodes["Ingress"]["outbound_deployments"]}
    assert out == {("topo", "Model"), ("extras", "Extra")}
    assert apps["topo"]["status"] == "RUNNING"
    assert apps["topo"]["deployments"]["Model"]["replicas"][0]["state"] == "RUNNING"
    assert serve.status().applications["topo"].deployment_topology == topo
    serve.delete("topo")
    serve.delete("extras")


def test_external_scaler_endpoint(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    def ext(request):
        return "ok"

    serve.run(ext.bind(), name="ext", route_prefix="/ext", external_scaler_enabled=True)
    serve.run(ext.bind(), name="noext", route_prefix="/noext")
    url = f"{serve_url}/api/v1/applications/ext/deployments/ext/scale"
    r = httpx.post(url, headers=AUTH(), json={"target_num_replicas": 3}, timeout=10)
    assert r.status_code == 200, r.text

    def running():
        return serve.status().applications["ext"].deployments["ext"].running_replicas
    wait_for_condition(lambda: running() == 3, timeout=20)
    r = httpx.post(url, headers=AUTH(), json={"target_num_replicas": 1}, timeout=10)
    assert r.status_code == 200
    wait_for_condition(lambda: running() == 1, timeout=20)
    for body in ({"target_num_replicas": -1}, {"target_num_replicas": "2"}, {"n": 1}, [1]):
        assert httpx.post(url, headers=AUTH(), json=body, timeout=10).status_code == 400, body
    assert httpx.post(url, headers=AUTH(), content=b"{bad", timeout=10).status_code == 400
    bad_app = f"{serve_url}/api/v1/applications/nope/deployments/ext/scale"
    assert httpx.post(bad_app, headers=AUTH(), json={"target_num_replicas": 1}).status_code == 400
    bad_dep = f"{serve_url}/api/v1/applications/ext/deployments/nope/scale"
    assert httpx.post(bad_dep, headers=AUTH(), json={"target_num_replicas": 1}).status_code == 400
    not_enabled = f"{serve_url}/api/v1/applications/noext/deployments/ext/scale"
    r = httpx.post(not_enabled, headers=AUTH(), json={"target_num_replicas": 2})
    assert r.status_code == 412 and "external_scaler_enabled" in r.json()["error"]
    assert get(url).status_code == 405
    serve.delete("ext")
    serve.delete("noext")


def test_external_scaler_and_autoscaling_are_exclusive(serve_url):
    @serve.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 2})
    def both(request):
        return "x"
    with pytest.raises(ValueError, match="external_scaler_enabled"):
        serve.run(both.bind(), name="both", external_scaler_enabled=True)


def test_a_dead_proxy_is_replaced(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    def alive(request):
        return "alive"

    serve.run(alive.bind(), name="alive", route_prefix="/alive")

    def proxy_pid():
        (info,) = get(f"{serve_url}/api/serve/applications/").json()["proxies"].values()
        return info["pid"]
    old = proxy_pid()
    os.kill(old, signal.SIGKILL)

    def serving():
        try:
            return get(f"{serve_url}/alive").text == "alive"
        except httpx.HTTPError:
            return False
    wait_for_condition(serving, timeout=30, message="a new proxy serves the app")
    assert proxy_pid() != old
    serve.delete("alive")


def test_put_declarative_config_then_delete_shuts_serve_down(serve_url):
    url = f"{serve_url}/api/serve/applications/"
    config = {"applications": [
        {"name": "cfg1", "route_prefix": "/cfg1", "import_path": "serve_apps:app",
         "deployments": [{"name": "Greeter", "num_replicas": 2}]},
        {"name": "cfg2", "route_prefix": "/cfg2", "import_path": "serve_apps:build",
         "args": {"greeting": "howdy"}},
    ]}
    r = httpx.put(url, headers=AUTH(), json=config, timeout=30)
    assert r.status_code == 200, r.text

    def apps():
        return get(url).json()["applications"]
    wait_for_condition(lambda: all(apps()[n]["status"] == "RUNNING" for n in ("cfg1", "cfg2")),
                       timeout=20)
    assert len(apps()["cfg1"]["deployments"]["Greeter"]["replicas"]) == 2
    assert apps()["cfg1"]["source"] == "declarative"
    assert get(f"{serve_url}/cfg1?name=x").text == "hello x"
    assert get(f"{serve_url}/cfg2").text == "howdy world"
    # a new config replaces the old one: cfg2 goes
    config["applications"] = config["applications"][:1]
    assert httpx.put(url, headers=AUTH(), json=config, timeout=30).status_code == 200
    wait_for_condition(lambda: "cfg2" not in apps(), timeout=20)
    bad = {"applications": [{"name": "x", "import_path": "no_such_module:app"}]}
    r = httpx.put(url, headers=AUTH(), json=bad, timeout=30)
    assert r.status_code == 400 and "no_such_module" in r.text
    assert httpx.put(url, headers=AUTH(), content=b"nope", timeout=10).status_code == 400
    assert httpx.delete(url, headers=AUTH(), timeout=10).status_code == 200

    def down():
        try:
            get(f"{serve_url}/-/healthz")
            return False
        except httpx.HTTPError:
            return True
    wait_for_condition(down, timeout=20, message="the proxy stopped")
    wait_for_condition(lambda: serve.status().applications == {}, timeout=20)
