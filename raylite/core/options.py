"""Validation of ``@remote`` / ``.options()`` arguments and their translation into a
scheduling demand (resources, strategy, labels, runtime env)."""

from __future__ import annotations

import difflib
import hashlib
import json

from raylite.core import runtime, scheduler

COMMON = {"num_cpus", "num_gpus", "memory", "resources", "accelerator_type", "label_selector",
          "scheduling_strategy", "runtime_env", "name", "_metadata"}
TASK_ONLY = {"max_retries", "retry_exceptions", "num_returns", "max_calls"}
ACTOR_ONLY = {"max_restarts", "max_task_retries", "max_concurrency", "namespace", "lifetime",
              "get_if_exists", "concurrency_groups", "max_pending_calls"}
TASK_OPTIONS = COMMON | TASK_ONLY
ACTOR_OPTIONS = COMMON | ACTOR_ONLY


class UnknownOptionError(TypeError, ValueError):
    """A keyword that is not an option: a TypeError, as Python raises for a mistyped
    keyword, and a ValueError, as Ray raises for an unknown task or actor option, so
    code written for either catches it."""


def check_keywords(given, allowed, where: str) -> None:
    """Raise UnknownOptionError (a TypeError) for a keyword ``where`` does not take,
    naming the closest valid one (``init(num_cpu=2)``: "did you mean 'num_cpus'?"),
    instead of ignoring it."""
    for key in given:
        if key in allowed:
            continue
        public = sorted(o for o in allowed if not o.startswith("_"))
        close = difflib.get_close_matches(key, public, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownOptionError(f"{where} got an unexpected keyword argument {key!r}{hint} "
                        f"(valid: {', '.join(public)})")


def validate(options: dict, for_actor: bool) -> dict:
    """Check ``@remote`` / ``.options()`` arguments: an unknown name raises
    UnknownOptionError (a TypeError and a ValueError) with the closest valid one (Ray
    raises ValueError, without a suggestion)."""
    allowed = ACTOR_OPTIONS if for_actor else TASK_OPTIONS
    check_keywords(options, allowed, "an actor's options" if for_actor else
                   "a remote function's options")
    for key in ("num_cpus", "num_gpus", "memory"):
        v = options.get(key)
        if v is not None and (not isinstance(v, (int, float)) or v < 0):
            raise ValueError(f"{key} must be a non-negative number, got {v!r}")
    res = options.get("resources")
    if res is not None:
        if not isinstance(res, dict) or any(not isinstance(v, (int, float)) or v < 0
                                            for v in res.values()):
            raise ValueError("resources must be a dict of name -> non-negative number, "
                             f"got {res!r}")
        for k in ("CPU", "GPU", "memory"):
            if k in res:
                raise ValueError(f"Use num_cpus/num_gpus/memory instead of resources[{k!r}]")
    nret = options.get("num_returns")
    if nret is not None and nret != "streaming" and nret != "dynamic" and (
            not isinstance(nret, int) or nret < 0):
        raise ValueError(f"num_returns must be a non-negative int or 'streaming', got {nret!r}")
    env = options.get("runtime_env")
    if env is not None:
        if not isinstance(env, dict):
            raise ValueError(f"runtime_env must be a dict, got {env!r}")
        unsupported = set(env) - {"env_vars"}
        if unsupported:
            raise ValueError(f"runtime_env keys {sorted(unsupported)} are not supported by "
                             "raylite; only 'env_vars' is (install packages in the cluster's "
                             "environment instead)")
        ev = env.get("env_vars") or {}
        if not isinstance(ev, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in ev.items()):
            raise ValueError("runtime_env['env_vars'] must be a dict of str -> str")
    scheduler.parse_selector(options.get("label_selector"))
    if options.get("lifetime") not in (None, "detached", "non_detached"):
        raise ValueError("lifetime must be 'detached' or 'non_detached'")
    _validate_limits(options)
    return options


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate_limits(options: dict) -> None:
    calls = options.get("max_calls")
    if calls is not None and (not _int(calls) or calls < 0):
        raise ValueError(f"max_calls must be an int >= 0 (0: no limit), got {calls!r}")
    pending = options.get("max_pending_calls")
    if pending is not None and (not _int(pending) or (pending < 1 and pending != -1)):
        raise ValueError(f"max_pending_calls must be -1 (no limit) or an int >= 1, got "
                         f"{pending!r}")
    conc = options.get("max_concurrency")
    if conc is not None and (not _int(conc) or conc < 1):
        raise ValueError(f"max_concurrency must be an int >= 1, got {conc!r}")
    groups = options.get("concurrency_groups")
    if groups is not None and (not isinstance(groups, dict) or not all(
            isinstance(k, str) and _int(v) and v >= 1 for k, v in groups.items())):
        raise ValueError("concurrency_groups must be a dict of group name -> max "
                         f"concurrency (an int >= 1), got {groups!r}")


def strategy_of(strategy):
    """Translate a scheduling_strategy option into the head's form."""
    if strategy is None or strategy == "DEFAULT":
        return "DEFAULT"
    if strategy == "SPREAD":
        return "SPREAD"
    to_wire = getattr(strategy, "_to_wire", None)
    if to_wire is not None:
        return to_wire()
    raise ValueError(f"Unknown scheduling_strategy {strategy!r}: use 'DEFAULT', 'SPREAD', "
                     "NodeAffinitySchedulingStrategy or PlacementGroupSchedulingStrategy")


def demand_of(options: dict, for_actor: bool) -> dict:
    default_cpus = 1
    cpus = options.get("num_cpus")
    demand = {"CPU": default_cpus if cpus is None else cpus,
              "GPU": options.get("num_gpus") or 0}
    if options.get("memory"):
        demand["memory"] = options["memory"]
    for k, v in (options.get("resources") or {}).items():
        demand[k] = v
    if options.get("accelerator_type"):
        demand[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    return {k: float(v) for k, v in demand.items() if v}


def env_of(options: dict) -> tuple[dict, str]:
    env_vars = (options.get("runtime_env") or {}).get("env_vars") or {}
    if not env_vars:
        return {}, ""
    key = hashlib.sha1(json.dumps(env_vars, sort_keys=True).encode()).hexdigest()[:16]
    return dict(env_vars), key


def lease_spec(options: dict, for_actor: bool = False) -> tuple[tuple, dict, dict]:
    """(scheduling key, demand, extra lease fields) for a task's options."""
    demand = demand_of(options, for_actor)
    strategy = strategy_of(options.get("scheduling_strategy"))
    env_vars, env_key = env_of(options)
    selector = options.get("label_selector") or None
    key = (tuple(sorted(demand.items())), repr(strategy),
           tuple(sorted((selector or {}).items())), env_key)
    extra = {"strategy": strategy, "label_selector": selector, "env_vars": env_vars,
             "env_key": env_key}
    if isinstance(strategy, tuple) and strategy[0] == "pg":
        extra["placement_group"] = list(strategy[1:])
    if options.get("max_calls"):  # such tasks get leases of their own, not pipelined
        key += (("max_calls", options["max_calls"]),)
        extra["max_calls"] = options["max_calls"]
    return key, demand, extra


def captured_strategy(options: dict):
    """A child of a task or actor running in a placement group with
    ``placement_group_capture_child_tasks=True`` runs in the same group, unless it asks
    for a strategy of its own (as Ray). Returns that options dict, or None."""
    pg = runtime.task_context.placement_group
    if not pg or not pg[2] or options.get("scheduling_strategy") is not None:
        return None
    return dict(options, scheduling_strategy=CapturedGroup(pg[0]))


class CapturedGroup:
    """The strategy of a child captured by its parent's placement group: any bundle of
    group ``pg_id``, capturing its own children too (what
    ``PlacementGroupSchedulingStrategy(pg, -1, True)`` sends; the core does not import
    ``raylite.util``, which is built on it)."""

    def __init__(self, pg_id: str):
        self.pg_id = pg_id

    def _to_wire(self):
        return ("pg", self.pg_id, -1, True)

    def __repr__(self) -> str:
        return f"PlacementGroupSchedulingStrategy({self.pg_id}, bundle_index=-1, " \
               "capture_child_tasks=True)"
