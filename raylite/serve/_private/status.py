"""Serve's state as plain dicts: ``serve.status()``, the REST API's
``GET /api/serve/applications/`` and the deployment topology. Read-only views of the
controller's records (a widget can poll ``get_serve_details``)."""

from __future__ import annotations

import time

from raylite.serve._private.deployment_state import RUNNING


def app_status(app) -> str:
    if app.deleting:
        return "DELETING"
    statuses = [d.status for d in app.deployments.values() if not d.deleting]
    if any(s == "DEPLOY_FAILED" for s in statuses):
        return "DEPLOY_FAILED"
    if any(s == "UNHEALTHY" for s in statuses):
        return "UNHEALTHY" if app.ever_running else "DEPLOYING"
    if all(s in ("HEALTHY", "UPSCALING", "DOWNSCALING") for s in statuses) and (
            app.ever_running or all(s == "HEALTHY" for s in statuses)):
        return "RUNNING"
    return "DEPLOYING"


def app_message(app) -> str:
    return "\n".join(f"Deployment {d.name!r}: {d.message}" for d in app.deployments.values()
                     if d.message)


def topology(app) -> dict:
    """``{"app_name", "ingress_deployment", "nodes": {name: {"name", "app_name",
    "outbound_deployments": [{"name", "app_name"}], "is_ingress"}}}``: the edges are the
    handles each deployment holds, from construction and from run time."""
    nodes = {}
    for d in app.deployments.values():
        out = [(app.name, e) for e in d.spec.get("edges", ())]
        out += [(ta, td) for (src, ta, td) in sorted(app.runtime_edges) if src == d.name]
        seen, outbound = set(), []
        for a, n in out:
            if (a, n) not in seen:
                seen.add((a, n))
                outbound.append({"name": n, "app_name": a})
        nodes[d.name] = {"name": d.name, "app_name": app.name,
                         "outbound_deployments": outbound, "is_ingress": d.name == app.ingress}
    return {"app_name": app.name, "ingress_deployment": app.ingress, "nodes": nodes}


def _replica_states(d) -> dict:
    counts: dict[str, int] = {}
    for r in d.replicas:
        counts[r.state] = counts.get(r.state, 0) + 1
    return counts


def deployment_summary(d) -> dict:
    """What a widget needs per deployment: target vs running replicas, load."""
    now = time.monotonic()
    running = [r for r in d.replicas if r.state == RUNNING]
    ongoing = sum(d.ongoing.get(r.replica_id, 0) for r in running)
    queued = sum(q for q, t in d.queued.values() if now - t < 5.0)
    return {
        "status": d.status, "status_trigger": d.trigger, "message": d.message,
        "replica_states": _replica_states(d), "target_num_replicas": d.target,
        "running_replicas": len(running), "ongoing_requests": ongoing,
        "queued_requests": queued,
    }


def status(ctrl) -> dict:
    """``serve.status()``'s data."""
    apps = {}
    for app in ctrl.apps.values():
        apps[app.name] = {
            "status": app_status(app), "message": app_message(app),
            "last_deployed_time_s": app.last_deployed_time_s,
            "route_prefix": app.route_prefix, "ingress_deployment": app.ingress,
            "external_scaler_enabled": app.external_scaler_enabled,
            "deployments": {d.name: deployment_summary(d) for d in app.deployments.values()},
            "deployment_topology": topology(app),
        }
    proxies = {}
    if ctrl.proxy_info is not None:
        proxies[ctrl.proxy_info["node_id"]] = "HEALTHY"
    return {"applications": apps, "proxies": proxies}


def _replica_detail(d, r) -> dict:
    return {"replica_id": r.replica_id, "state": r.state, "node_id": r.node_id,
            "actor_id": r.actor_id, "pid": r.pid, "start_time_s": r.start_time,
            "version": r.version}


def details(ctrl) -> dict:
    """``GET /api/serve/applications/``'s answer (Ray's ``ServeInstanceDetails`` shape,
    with the fields raylite has)."""
    apps = {}
    for app in ctrl.apps.values():
        deps = {}
        for d in app.deployments.values():
            cfg = dict(d.config)
            deps[d.name] = dict(deployment_summary(d), name=d.name, deployment_config=cfg,
                                replicas=[_replica_detail(d, r) for r in d.replicas])
        apps[app.name] = {
            "name": app.name, "route_prefix": app.route_prefix,
            "status": app_status(app), "message": app_message(app),
            "last_deployed_time_s": app.last_deployed_time_s,
            "deployed_app_config": app.from_config,
            "source": "declarative" if app.from_config else "imperative",
            "external_scaler_enabled": app.external_scaler_enabled,
            "deployments": deps, "deployment_topology": topology(app),
        }
    info = ctrl.proxy_info or {}
    return {
        "controller_info": {"actor_name": "SERVE_CONTROLLER"},
        "proxy_location": "HeadOnly",
        "http_options": ctrl.http_options,
        "proxies": ({info["node_id"]: {"node_id": info["node_id"], "status": "HEALTHY",
                                       "actor_id": info.get("actor_id"),
                                       "pid": info.get("pid")}} if info else {}),
        "applications": apps,
    }
