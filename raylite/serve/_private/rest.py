"""Serve's REST API, served by the HTTP proxy on the serve port.

- ``GET /api/serve/applications/``: every application's status, deployments, replicas
  and ``deployment_topology``.
- ``PUT /api/serve/applications/``: deploy a declarative config
  (``{"applications": [{"name", "route_prefix", "import_path", "args", "deployments":
  [...], "external_scaler_enabled"}]}``); applications not in it are deleted.
- ``DELETE /api/serve/applications/``: shut Serve down.
- ``POST /api/v1/applications/{app}/deployments/{deployment}/scale`` with
  ``{"target_num_replicas": n}``: 200 accepted; 400 bad body or unknown app/deployment;
  412 when the app did not set ``external_scaler_enabled``.
- ``GET /-/healthz``, ``GET /-/routes``.

Security (differs from Ray, whose dashboard API is open by default): ``PUT``, ``DELETE``
and ``scale`` need the cluster's token as ``Authorization: Bearer <token>``
(``raylite.get_runtime_context().get_cluster_token()``), else 401; every ``/api/`` request
whose ``Host`` is a DNS name other than this machine's (DNS rebinding) is refused with
403, as is a mutating request whose ``Origin`` is such a name (a web page in the user's
browser).

Differs from Ray: Ray serves the ``/api/`` paths on the dashboard (port 8265); raylite has
no dashboard, so they share the proxy's port (these exact paths shadow an app's).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import re
import socket
from urllib.parse import urlsplit

from raylite.serve._private import http_util

_SCALE = re.compile(r"^/api/v1/applications/([^/]+)/deployments/([^/]+)/scale/?$")
_APPS = ("/api/serve/applications/", "/api/serve/applications")


async def _respond(send, status: int, payload, headers=()) -> None:
    if isinstance(payload, (dict, list)):
        body, ctype = json.dumps(payload).encode(), b"application/json"
    else:
        body, ctype = str(payload).encode(), b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _json_body(receive):
    raw = await http_util.read_body(receive)
    try:
        return json.loads(raw or b"null"), None
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"Request body is not valid JSON: {e}"


@functools.lru_cache(maxsize=1)
def _own_names() -> frozenset:
    names = {"localhost", socket.gethostname().lower()}
    try:
        names.add(socket.getfqdn().lower())
    except OSError:
        pass
    return frozenset(names)


def _trusted_host(host: str) -> bool:
    """An IP literal, localhost or this machine's own name: never a name an attacker's
    DNS can point at us."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host in _own_names()


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def refusal(scope, token: str | None) -> tuple[int, str] | None:
    """Why this ``/api/`` request is refused, or None: a foreign ``Host`` or ``Origin``
    (403), a mutating request without the cluster's bearer token (401)."""
    host = _header(scope, b"host")
    if host is not None and not _trusted_host(host):
        return 403, (f"Host {host!r} is not this machine: the REST API answers only "
                     "requests addressed to an IP, localhost or this host's name.")
    if scope["method"] in ("GET", "HEAD", "OPTIONS"):
        return None
    origin = _header(scope, b"origin")
    if origin is not None and origin != "null" and \
            not _trusted_host(urlsplit(origin).netloc or origin):
        return 403, f"Origin {origin!r} may not change Serve (a web page cannot)."
    auth = _header(scope, b"authorization") or ""
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        return 401, ("This request changes Serve and needs the cluster's token: send "
                     "'Authorization: Bearer <token>' (the token: "
                     "raylite.get_runtime_context().get_cluster_token(), or the one "
                     "`raylite start` printed).")
    return None


async def handle(proxy, path: str, scope, receive, send) -> bool:
    """Answer a REST request; False when ``path`` is not one of ours."""
    method = scope["method"]
    ctrl = proxy.controller
    if path.startswith("/api/") and (path in _APPS or _SCALE.match(path)):
        refused = refusal(scope, proxy.token)
        if refused is not None:
            code, msg = refused
            headers = [(b"www-authenticate", b"Bearer")] if code == 401 else []
            await _respond(send, code, {"error": msg}, headers)
            return True
    if path == "/-/healthz":
        await _respond(send, 200, "success")
        return True
    if path == "/-/routes":
        await _respond(send, 200, proxy.route_table())
        return True
    if path in _APPS:
        if method == "GET":
            await _respond(send, 200, await ctrl.get_serve_details.remote())
        elif method == "PUT":
            config, err = await _json_body(receive)
            if err is None:
                code, msg = await ctrl.deploy_config.remote(config)
            else:
                code, msg = 400, err
            await _respond(send, code, msg)
        elif method == "DELETE":
            ctrl.shutdown.remote()
            await _respond(send, 200, "Serve is shutting down.")
        else:
            await _respond(send, 405, f"Method {method} not allowed on {path}")
        return True
    m = _SCALE.match(path)
    if m is None:
        return False
    if method != "POST":
        await _respond(send, 405, f"Method {method} not allowed on {path}; use POST")
        return True
    body, err = await _json_body(receive)
    n = body.get("target_num_replicas") if isinstance(body, dict) else None
    if err is None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        err = ('Body must be JSON {"target_num_replicas": n} with an integer n >= 0, got '
               f"{body!r}")
    if err is not None:
        await _respond(send, 400, {"error": err})
        return True
    code, msg = await ctrl.external_scale.remote(m.group(1), m.group(2), n)
    await _respond(send, code, {"message": msg} if code == 200 else {"error": msg})
    return True
