"""``fit()``: place the workers, start the backend, run the loop, restart on failure.

This runs in the driver. It reserves one placement group for the run (a bundle per
worker, carrying the ScalingConfig's label selectors), waits a bounded time for it
(Ray waits forever) and fails with what was asked and what each node has; starts the
coordinator actor and the worker actors; orders ranks by node; asks the backend to set
up (torch.distributed); runs the training function on every worker and watches both the
workers and the coordinator's event log. When a worker fails (an exception or a dead
process) the whole group is replaced and resumes from the latest checkpoint, up to
``FailureConfig.max_failures`` times. Whatever happens (an error, a KeyboardInterrupt
from the notebook), the workers and the placement group are freed on the way out.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
import uuid

import raylite
from raylite.train._internal import session as S
from raylite.train._internal.coordinator import TrainCoordinator
from raylite.train._internal.storage import StorageContext
from raylite.train._internal.worker import TrainWorker, call_train_fn
from raylite.train.checkpoint import Checkpoint
from raylite.train.config import DEFAULT_STORAGE_PATH
from raylite.train.errors import PlacementError, TrainingFailedError, WorkerGroupError
from raylite.train.result import Result, from_state

log = logging.getLogger(__name__)

NAMESPACE = "raylite_train"
PLACEMENT_TIMEOUT_ENV = "RAYLITE_TRAIN_PLACEMENT_TIMEOUT_S"
BARRIER_TIMEOUT_ENV = "RAYLITE_TRAIN_REPORT_BARRIER_TIMEOUT_S"

# Coordinators of the last finished runs stay up so a TrainView can still show them.
_recent = collections.deque(maxlen=3)


class _Fatal(TrainingFailedError):
    """A failure that a restart cannot fix (ranks disagree about reports)."""


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _storage(trainer) -> StorageContext:
    rc = trainer.run_config
    name = rc.name or time.strftime("raylite_train_run-%Y-%m-%d_%H-%M-%S") + \
        f"-{uuid.uuid4().hex[:4]}"
    storage = StorageContext(rc.storage_path or DEFAULT_STORAGE_PATH, name,
                             rc.storage_filesystem)
    storage.makedirs()
    return storage


def fit(trainer) -> Result:
    storage = _storage(trainer)
    if trainer.scaling_config.num_workers == 0:
        return _fit_local(trainer, storage)
    return _Run(trainer, storage).fit()


# ------------------------------------------------------------------------ local mode
def _fit_local(trainer, storage: StorageContext) -> Result:
    """Ray's local mode: the loop runs in this process as rank 0 of 1, without actors
    or a process group; reports, checkpoints and validation work as usual."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="raylite-train-local", daemon=True)
    thread.start()
    coord = TrainCoordinator(storage.experiment_name, storage,
                             trainer.run_config.checkpoint_config, 1e9, local=True)
    client = S.CoordinatorClient(local=coord, loop=loop)
    try:
        attempt, seq0 = client.call("start_attempt", 1, [{"rank": 0, "node_id": "driver",
                                                         "pid": os.getpid()}])
        datasets = {k: v.iterator() for k, v in (trainer.datasets or {}).items()}
        s = S.init_session(rank=0, world_size=1, local_rank=0, local_world_size=1,
                           node_rank=0, experiment_name=storage.experiment_name,
                           storage=storage, checkpoint=None, datasets=datasets,
                           coordinator=client, attempt=attempt, seq_offset=seq0,
                           use_gpu=trainer.scaling_config.use_gpu)
        error = None
        try:
            call_train_fn(trainer.train_loop_per_worker, trainer.train_loop_config)
            s.finish()
        except Exception as e:
            error = e
        finally:
            S.end_session()
        state = client.call("finish", None if error is None else repr(error))
        if error is not None:
            raise TrainingFailedError(f"The training function failed: {error!r}",
                                      {0: error}) from error
        return from_state(state, storage)
    finally:
        client.call("close")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


# ------------------------------------------------------------------------ on actors
class _Run:
    def __init__(self, trainer, storage: StorageContext):
        self.t = trainer
        self.sc = trainer.scaling_config
        self.rc = trainer.run_config
        self.storage = storage
        self.pg = None
        self.workers: list = []
        self.coord = None
        self.cursor = 0

    def fit(self) -> Result:
        failures = 0
        max_failures = self.rc.failure_config.max_failures
        error: BaseException | None = None
        try:
            self._start_coordinator()
            self._place()
            while True:
                try:
                    self._run_group()
                    break
                except _Fatal:
                    raise
                except WorkerGroupError as e:
                    if max_failures != -1 and failures >= max_failures:
                        raise
                    failures += 1
                    log.warning("training workers failed (%d/%s): restarting from the latest "
                                "checkpoint: %s", failures, max_failures if max_failures != -1
                                else "inf", e)
                    raylite.get(self.coord.note_restart.remote(str(e).splitlines()[0]))
                    self._stop_workers()
            state = raylite.get(self.coord.finish.remote(None))
            return from_state(state, self.storage)
        except BaseException as e:
            error = e
            if self.coord is not None:
                try:
                    why = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
                    raylite.get(self.coord.finish.remote(why), timeout=10)
                except BaseException:
                    pass
            raise
        finally:
            self._stop_workers()
            if self.pg is not None:
                try:
                    raylite.util.remove_placement_group(self.pg)
                except Exception as e:
                    log.warning("could not remove the run's placement group: %r", e)
            if self.coord is not None:
                if error is None or not isinstance(error, KeyboardInterrupt):
                    _recent.append(self.coord)
                else:
                    raylite.kill(self.coord)

    # ------------------------------------------------------------------ pieces
    def _start_coordinator(self) -> None:
        cls = raylite.remote(TrainCoordinator)
        # "<run name>:<start time in ms, hex>": a TrainView finds the newest run by it
        name = f"{self.storage.experiment_name}:{int(time.time() * 1000):012x}"
        self.coord = cls.options(name=name, namespace=NAMESPACE, num_cpus=0,
                                 max_concurrency=1000).remote(
            self.storage.experiment_name, self.storage, self.rc.checkpoint_config,
            _env_float(BARRIER_TIMEOUT_ENV, 300.0))

    def _place(self) -> None:
        from raylite.util import placement_group

        sc = self.sc
        bundles = [sc._resources_per_worker for _ in range(sc.num_workers)]
        # kept at once, so an interrupt while it waits still removes it
        self.pg = pg = placement_group(bundles, strategy=sc.placement_strategy,
                                       name=f"train:{self.storage.experiment_name}",
                                       bundle_label_selector=sc._bundle_label_selector)
        timeout = _env_float(PLACEMENT_TIMEOUT_ENV, 30.0)
        if _autoscaler_running():
            timeout *= 10  # new nodes take a while to come up
        deadline = time.monotonic() + timeout
        while not pg.wait(timeout_seconds=max(0.05, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise PlacementError(_placement_message(sc, bundles, timeout))

    def _start_workers(self) -> list[dict]:
        from raylite.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        res = self.sc._resources_per_worker
        extra = {k: v for k, v in res.items() if k not in ("CPU", "GPU", "memory")}
        opts = {"num_cpus": res.get("CPU", 0), "num_gpus": res.get("GPU", 0),
                "max_concurrency": 2}
        if extra:
            opts["resources"] = extra
        if res.get("memory"):
            opts["memory"] = res["memory"]
        if self.rc.worker_runtime_env:
            opts["runtime_env"] = self.rc.worker_runtime_env
        cls = raylite.remote(TrainWorker)
        workers = [cls.options(scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, i),
                               **opts).remote() for i in range(self.sc.num_workers)]
        self.workers = workers
        infos = raylite.get([w.info.remote() for w in workers])
        nodes = {n["NodeID"]: n for n in raylite.nodes()}
        node_rank: dict = {}
        for info in infos:
            node_rank.setdefault(info["node_id"], len(node_rank))
        order = sorted(range(len(workers)), key=lambda i: (node_rank[infos[i]["node_id"]], i))
        self.workers = [workers[i] for i in order]
        ranked = []
        for rank, i in enumerate(order):
            info = dict(infos[i])
            node = nodes.get(info["node_id"], {})
            same = [r for r in ranked if r["node_id"] == info["node_id"]]
            info.update(rank=rank, local_rank=len(same), node_rank=node_rank[info["node_id"]],
                        address=node.get("NodeManagerAddress", "127.0.0.1"),
                        labels={k: v for k, v in (node.get("Labels") or {}).items()
                                if not k.startswith("raylite.io/node-id")})
            ranked.append(info)
        for info in ranked:
            info["local_world_size"] = sum(r["node_id"] == info["node_id"] for r in ranked)
        return ranked

    def _run_group(self) -> None:
        ranked = self._start_workers()
        attempt, seq0 = raylite.get(self.coord.start_attempt.remote(len(ranked), ranked))
        latest = raylite.get(self.coord.latest_checkpoint.remote())
        checkpoint = Checkpoint(latest["path"], self.storage.filesystem) if latest else None
        backend = self.t._backend_config()
        if backend is not None:
            try:
                backend.on_start(self.workers, ranked, self.sc)
            except Exception as e:
                raise WorkerGroupError(f"Setting up the {backend.backend_name} process group "
                                       f"failed: {e}", {}) from e
        shards = self.t._dataset_config().configure(
            self.t.datasets or {}, len(ranked), [r["node_id"] for r in ranked],
            self.sc._resources_per_worker)
        fn = raylite.put(self.t.train_loop_per_worker)
        cfg = raylite.put(self.t.train_loop_config)
        refs = []
        for w, info, data in zip(self.workers, ranked, shards, strict=True):
            kwargs = {"rank": info["rank"], "world_size": len(ranked),
                      "local_rank": info["local_rank"],
                      "local_world_size": info["local_world_size"],
                      "node_rank": info["node_rank"],
                      "experiment_name": self.storage.experiment_name,
                      "storage": self.storage, "checkpoint": checkpoint, "datasets": data,
                      "coordinator": S.CoordinatorClient(handle=self.coord),
                      "attempt": attempt, "seq_offset": seq0, "use_gpu": self.sc.use_gpu}
            refs.append(w.run.remote(fn, cfg, kwargs))
        self._watch(refs)

    def _watch(self, refs: list) -> None:
        rank_of = {r: i for i, r in enumerate(refs)}
        pending = list(refs)
        poll = self.coord.poll.remote(self.cursor, 1.0)
        while pending:
            ready, _ = raylite.wait(pending + [poll], num_returns=1, timeout=2.0)
            if poll in ready:
                events, self.cursor, fatal = raylite.get(poll)
                self._callbacks(events)
                if fatal:
                    raise _Fatal(fatal)
                poll = self.coord.poll.remote(self.cursor, 1.0)
            for ref in ready:
                if ref is poll or ref not in rank_of:
                    continue
                pending.remove(ref)
                try:
                    raylite.get(ref)
                except Exception as e:
                    self._failed(rank_of, {rank_of[ref]: e}, pending)
        events, self.cursor, _ = raylite.get(self.coord.poll.remote(self.cursor, 0))
        self._callbacks(events)

    def _failed(self, rank_of: dict, failures: dict, pending: list) -> None:
        """Raise for a failed group. The other ranks' errors are gathered for a moment
        first, so the root cause (a dead worker) is named rather than the
        "connection reset" its peers see in their collectives."""
        if pending:
            done, _ = raylite.wait(pending, num_returns=len(pending), timeout=1.0)
            for ref in done:
                try:
                    raylite.get(ref)
                except Exception as e:
                    failures[rank_of[ref]] = e
        fatal = raylite.get(self.coord.poll.remote(self.cursor, 0))[2]
        if fatal:
            raise _Fatal(fatal, failures) from next(iter(failures.values()))
        dead = [r for r, e in failures.items() if isinstance(e, raylite.exceptions.RayActorError)]
        rank = min(dead) if dead else min(failures)
        e = failures[rank]
        others = sorted(set(failures) - {rank})
        more = f" (ranks {others} failed too)" if others else ""
        what = "died" if dead else "failed"
        raise WorkerGroupError(f"Training worker rank {rank} {what}{more}: {e}",
                               failures) from e

    def _callbacks(self, events: list) -> None:
        if not self.rc.callbacks:
            return
        for _, kind, body in events:
            for cb in self.rc.callbacks:
                try:
                    if kind == "report" and body["rank"] == 0 and hasattr(cb, "after_report"):
                        cb.after_report(None, [body["metrics"]], None)
                    elif kind == "checkpoint" and hasattr(cb, "after_checkpoint"):
                        rec = body["checkpoint"]
                        cb.after_checkpoint(Checkpoint(rec["path"], self.storage.filesystem),
                                            rec["metrics"])
                except Exception:
                    log.exception("a train callback failed")

    def _stop_workers(self) -> None:
        for w in self.workers:
            try:
                raylite.kill(w)
            except Exception:
                pass
        self.workers = []


def _autoscaler_running() -> bool:
    try:
        from raylite.util.state import get_autoscaler_status

        return get_autoscaler_status() is not None
    except Exception:
        return False


def _placement_message(sc, bundles: list, timeout: float) -> str:
    sel = sc._bundle_label_selector
    asked = [f"  worker {i}: {b}" + (f", label_selector {sel[i]}" if sel and sel[i] else "")
             for i, b in enumerate(bundles)]
    have = []
    for n in raylite.nodes():
        if not n["Alive"]:
            continue
        labels = {k: v for k, v in n["Labels"].items() if not k.startswith("raylite.io/")}
        have.append(f"  node {n['NodeID'][:12]}: resources {_short(n['Resources'])}, "
                    f"available {_short(n['AvailableResources'])}, labels {labels}")
    return (f"Could not place {len(bundles)} training workers (strategy "
            f"{sc.placement_strategy}) within {timeout:g} s (set {PLACEMENT_TIMEOUT_ENV} to "
            f"wait longer). Asked for:\n" + "\n".join(asked) +
            "\nThe cluster's nodes:\n" + ("\n".join(have) or "  (none alive)"))


def _short(res: dict) -> dict:
    return {k: (round(v / 2**30, 1) if k == "memory" else v) for k, v in res.items()}
