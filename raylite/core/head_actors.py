"""The head's actor directory: creation, placement, restarts, names, kills."""

from __future__ import annotations

import logging

from raylite.core import protocol as P
from raylite.core.head_tables import (
    MAX_DEAD_ACTORS,
    Actor,
    Request,
    Worker,
)

log = logging.getLogger("raylite.head")


class ActorsPart:
    """Actor handlers of the Head (``self`` is the Head)."""

    def on_create_actor(self, spec: dict) -> None:
        name, ns = spec.get("name"), spec.get("namespace") or ""
        if name:
            existing = self.named.get((ns, name))
            if existing is not None and self.actors[existing].state != "DEAD":
                if spec.get("get_if_exists"):
                    self.reply(spec, self.actors[existing].info())
                else:
                    self.reply(spec, error=ValueError(
                        f"An actor named {name!r} already exists in namespace {ns!r}; pick "
                        "another name, or pass get_if_exists=True to reuse it."))
                return
        actor = Actor(spec)
        self.actors[actor.actor_id] = actor
        if name:
            self.named[(ns, name)] = actor.actor_id
            self.reply(spec, actor.info())
        self.pending.append(Request(spec, actor=actor))

    def start_actor(self, actor: Actor, w: Worker) -> None:
        w.state, w.actor, w.owner = "actor", actor, actor.owner
        actor.worker = w
        spec = actor.spec
        body = {k: spec[k] for k in ("actor_id", "cls", "args", "meta", "max_concurrency",
                                     "job_id", "name", "sys_path")}
        strat = spec.get("strategy")
        pg = list(strat[1:]) if isinstance(strat, (list, tuple)) and strat[0] == "pg" else None
        self.send(w.addr, P.BECOME_ACTOR, dict(body, gpu_ids=w.gpu_ids, resources=dict(w.held),
                                               placement_group=pg))

    def on_actor_ready(self, body: dict) -> None:
        actor = self.actors.get(body["actor_id"])
        if actor is None or actor.worker is None:
            return
        if body.get("error") is not None:
            actor.restarts_left = 0
            actor.error = body["error"]
            self.kill_worker(actor.worker)
            self.set_actor_state(actor, "DEAD")
            return
        w = actor.worker
        if not actor.spec.get("hold_cpu"):
            # Ray: an actor needs 1 CPU to be placed but holds 0 while it runs
            pool = self.pool(self.nodes[w.node_id], w.bundle)
            cpus = w.held.pop("CPU", 0.0)
            if pool is not None:
                pool.give({"CPU": cpus})
        self.set_actor_state(actor, "ALIVE")

    def set_actor_state(self, actor: Actor, state: str) -> None:
        actor.state = state
        info = actor.info()
        self.publish(P.EV_ACTOR, info)
        if state == "DEAD":
            key = (actor.namespace, actor.name)
            if actor.name and self.named.get(key) == actor.actor_id:
                del self.named[key]  # the name is free again
            self.dead_actors.append(actor.actor_id)
            while len(self.dead_actors) > MAX_DEAD_ACTORS:
                old = self.actors.get(self.dead_actors.popleft())
                if old is not None and old.state == "DEAD" and not old.waiters:
                    del self.actors[old.actor_id]
        if state in ("ALIVE", "DEAD"):
            for body in actor.waiters:
                self.reply(body, info)
            actor.waiters = []

    def actor_worker_died(self, actor: Actor, reason: str) -> None:
        actor.worker = None
        if actor.state == "DEAD":
            return
        if actor.restarts_left != 0 and actor.error is None:
            if actor.restarts_left > 0:
                actor.restarts_left -= 1
            actor.num_restarts += 1
            self.set_actor_state(actor, "RESTARTING")
            self.pending.append(Request(actor.spec, actor=actor))
        else:
            actor.error = actor.error or f"its worker process died ({reason})"
            self.set_actor_state(actor, "DEAD")

    def on_get_actor_info(self, body: dict) -> None:
        if body.get("name") is not None:
            aid = self.named.get((body.get("namespace") or "", body["name"]))
            actor = self.actors.get(aid) if aid else None
            if actor is None or actor.state == "DEAD":
                self.reply(body, error=ValueError(
                    f"Failed to look up actor with name {body['name']!r} in namespace "
                    f"{body.get('namespace') or ''!r}: no such live actor."))
                return
        else:
            actor = self.actors.get(body["actor_id"])
            if actor is None:
                self.reply(body, {"state": "DEAD", "error": "unknown actor"})
                return
        if body.get("wait") and actor.state not in ("ALIVE", "DEAD"):
            actor.waiters.append(body)
        else:
            self.reply(body, actor.info())

    def on_kill_actor(self, body: dict) -> None:
        actor = self.actors.get(body["actor_id"])
        if actor is None or actor.state == "DEAD":
            return
        if body.get("no_restart", True):
            actor.restarts_left = 0
        if body.get("graceful"):  # its owner sends it a terminate call after its others
            actor.error = ("The actor was terminated because all handles to it went out "
                           "of scope.")
            return
        self.kill_actor(actor, "it was killed with raylite.kill")

    def kill_actor(self, actor: Actor, reason: str) -> None:
        if actor.worker is not None:
            if actor.restarts_left == 0:
                actor.error = f"The actor died because {reason}."
            self.kill_worker(actor.worker)
        else:
            self.pending = [r for r in self.pending if r.actor is not actor]
            for node in self.nodes.values():
                for grants in node.waiting_spawn.values():
                    for req in list(grants):
                        if req.actor is actor:
                            grants.remove(req)
                            self.unreserve(node, req)
            actor.error = f"The actor died because {reason}."
            self.set_actor_state(actor, "DEAD")
