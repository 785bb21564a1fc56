"""raylite.train on real processes: a torch.distributed (gloo) group of 2 worker actors,
checkpoint barriers, metrics-only reports that never wait, retention, validation,
datasets, a worker killed with SIGKILL and the group's restart, placement failures,
and a KeyboardInterrupt during fit()."""

from __future__ import annotations

import os
import signal
import tempfile

import pytest

import raylite
from raylite import data, train
from raylite.testing import SignalActor, wait_for_condition
from raylite.train import (
    Checkpoint,
    CheckpointConfig,
    CheckpointConsistencyMode,
    CheckpointUploadMode,
    FailureConfig,
    Result,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)

torch = pytest.importorskip("torch")
from raylite.train.torch import TorchTrainer, prepare_data_loader, prepare_model  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _run(tmp_path, name="run", **kw) -> RunConfig:
    return RunConfig(name=name, storage_path=str(tmp_path), **kw)


def _ckpt(**files) -> Checkpoint:
    d = tempfile.mkdtemp()
    for k, v in files.items():
        with open(os.path.join(d, k), "w") as f:
            f.write(str(v))
    return Checkpoint.from_directory(d)


def _ddp_loop(config):
    import torch.distributed as dist

    ctx = train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(rank)  # different data per rank; DDP must keep the weights equal
    model = prepare_model(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(config["epochs"]):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.zeros_like(w) for _ in range(ctx.get_world_size())]
        dist.all_gather(gathered, w)
        metrics = {"epoch": epoch, "loss": float(loss.detach()),
                   "val": {"loss": [10 - epoch, epoch]},
                   "same_weights": all(torch.equal(gathered[0], g) for g in gathered),
                   "env": {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                      "MASTER_ADDR")},
                   "ctx": [ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(),
                           ctx.get_local_world_size(), ctx.get_node_rank()],
                   "ddp": type(model).__name__}
        ckpt = _ckpt(epoch=epoch, rank=rank) if rank == 0 else None
        train.report(metrics, checkpoint=ckpt)
    seen = train.get_all_reported_checkpoints(CheckpointConsistencyMode.COMMITTED)
    train.report({"seen": [r.metrics["epoch"] for r in seen], "done": True})


def test_torch_ddp_group_reports_and_retention(shared_cluster, tmp_path):
    trainer = TorchTrainer(
        _ddp_loop, train_loop_config={"epochs": 4},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=_run(tmp_path, checkpoint_config=CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="val/loss/0",
            checkpoint_score_order="min")))
    result = trainer.fit()
    df = result.metrics_dataframe
    assert list(df["epoch"].dropna()) == [0, 1, 2, 3]
    assert df["same_weights"].dropna().all()
    first = df.iloc[0]
    assert first["ddp"] == "DistributedDataParallel"
    assert first["env/WORLD_SIZE"] == "2" and first["env/MASTER_ADDR"] == "127.0.0.1"
    assert first["ctx"] == [0, 2, 0, 2, 0]
    assert result.metrics["done"] and result.metrics["seen"] == [2, 3]
    # retention kept the two lowest val/loss/0 (the latest is one of them)
    kept = [m["epoch"] for _, m in result.best_checkpoints]
    assert kept == [2, 3]
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint_000002", "checkpoint_000003",
                                                    "raylite_train_state.json"]
    best = result.get_best_checkpoint("val/loss/1", "max")
    with best.as_directory() as d:
        assert open(os.path.join(d, "epoch")).read() == "3"
    again = Result.from_path(str(tmp_path / "run"))
    assert again.checkpoint == result.checkpoint and again.metrics == result.metrics
    with pytest.raises(ValueError):
        result.get_best_checkpoint("loss", "maximum")
    with pytest.raises(RuntimeError, match="no_such"):
        result.get_best_checkpoint("no_such/metric", "max")


def test_metrics_only_reports_never_wait(shared_cluster, tmp_path):
    gate = raylite.remote(num_cpus=0)(SignalActor).remote()

    def loop():
        import time

        rank = train.get_context().get_world_rank()
        if rank == 1:
            raylite.get(gate.wait.remote())  # held until rank 0 is done reporting
            train.report({"rank": 1})
            return
        times = []
        for i in range(50):
            t = time.perf_counter()
            train.report({"i": i})
            times.append(time.perf_counter() - t)
        # no checkpoint was ever reported: this returns at once (Ray PR #58870)
        assert train.get_all_reported_checkpoints() == []
        gate.send.remote()
        train.report({"max_report_s": max(times)})

    result = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=2),
                          run_config=_run(tmp_path)).fit()
    assert result.metrics["max_report_s"] < 0.05
    assert result.checkpoint is None


def test_ranks_that_skip_a_checkpoint_report_are_named(shared_cluster, tmp_path):
    def finishes_early():
        if train.get_context().get_world_rank() == 0:
            train.report({"x": 1}, checkpoint=_ckpt(a=1))

    with pytest.raises(TrainingFailedError, match=r"ranks \[1\] finished"):
        TorchTrainer(finishes_early, scaling_config=ScalingConfig(num_workers=2),
                     run_config=_run(tmp_path, "early")).fit()


def test_barrier_timeout_names_missing_ranks(shared_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLITE_TRAIN_REPORT_BARRIER_TIMEOUT_S", "1")
    gate = raylite.remote(num_cpus=0)(SignalActor).remote()

    def stuck():
        if train.get_context().get_world_rank() == 0:
            train.report({"x": 1}, checkpoint=_ckpt(a=1))
        else:
            raylite.get(gate.wait.remote())  # never reaches report

    with pytest.raises(TrainingFailedError, match=r"Ranks \[1\] did not reach report #1"):
        TorchTrainer(stuck, scaling_config=ScalingConfig(num_workers=2),
                     run_config=_run(tmp_path, "stuck", failure_config=FailureConfig(2))).fit()


def test_killed_worker_restarts_group_from_latest_checkpoint(shared_cluster, tmp_path):
    def loop(config):
        ckpt = train.get_checkpoint()
        start = 0
        if ckpt is not None:
            with ckpt.as_directory() as d:
                start = int(open(os.path.join(d, "epoch")).read()) + 1
        rank = train.get_context().get_world_rank()
        for epoch in range(start, 4):
            if epoch == 2 and rank == 1 and ckpt is None:
                os.kill(os.getpid(), signal.SIGKILL)  # a real dead worker process
            t = torch.tensor([1.0])
            torch.distributed.all_reduce(t)
            train.report({"epoch": epoch, "start": start, "pid": os.getpid()},
                         checkpoint=_ckpt(epoch=epoch))

    result = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=2),
                          run_config=_run(tmp_path, failure_config=FailureConfig(1))).fit()
    epochs = list(result.metrics_dataframe["epoch"])
    assert epochs == [0, 1, 2, 3]  # epochs 0-1 before the kill, 2-3 resumed after it
    assert list(result.metrics_dataframe["start"]) == [0, 0, 2, 2]
    assert len(set(result.metrics_dataframe["pid"])) == 2  # a new rank-0 process
    state = Result.from_path(str(tmp_path / "run"))
    assert [m["epoch"] for _, m in state.best_checkpoints] == [0, 1, 2, 3]


def test_worker_death_without_failures_left_fails_fit(shared_cluster, tmp_path):
    def loop():
        if train.get_context().get_world_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        torch.distributed.barrier()

    with pytest.raises(TrainingFailedError, match="rank 1") as info:
        TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=2),
                     run_config=_run(tmp_path)).fit()
    assert isinstance(info.value.worker_failures[1], raylite.exceptions.RayActorError)
    wait_for_condition(lambda: not _alive("TrainWorker"), 10)


def test_loop_error_carries_the_traceback(shared_cluster, tmp_path):
    def loop():
        raise ValueError("bad batch 7")

    with pytest.raises(TrainingFailedError, match="bad batch 7") as info:
        TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1),
                     run_config=_run(tmp_path)).fit()
    assert isinstance(info.value.__cause__, ValueError)
    assert "in loop" in str(info.value)


def test_async_upload_validation_and_consistency(shared_cluster, tmp_path):
    def validate(checkpoint, config):
        with checkpoint.as_directory() as d:
            epoch = int(open(os.path.join(d, "epoch")).read())
        if epoch == 1:
            raise RuntimeError("validation failed")
        return {"val": {"acc": epoch * config["scale"]}}

    def loop():
        for epoch in range(3):
            train.report({"epoch": epoch}, checkpoint=_ckpt(epoch=epoch),
                         checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                         validate_fn=validate, validate_config={"scale": 10})
        validated = train.get_all_reported_checkpoints()  # VALIDATED: waits for all three
        train.report({"validated": [r.metrics for r in validated]})

    result = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1),
                          run_config=_run(tmp_path)).fit()
    assert result.metrics["validated"] == [{"epoch": 0, "val": {"acc": 0}}, {"epoch": 1},
                                           {"epoch": 2, "val": {"acc": 20}}]
    assert result.get_best_checkpoint("val/acc", "max").path.endswith("checkpoint_000002")


def test_no_upload_and_fsspec_storage(shared_cluster, tmp_path):
    pytest.importorskip("fsspec")

    def loop():
        storage = train.get_context().get_storage()
        d = os.path.join(storage.experiment_fs_path, "mine")
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "w"), "w").write("x")
        train.report({"a": 1}, checkpoint=Checkpoint(d),
                     checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)
        train.report({"a": 2}, checkpoint=_ckpt(w="y"))

    uri = f"local://{tmp_path}"
    result = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1),
                          run_config=RunConfig(name="fs", storage_path=uri)).fit()
    assert result.best_checkpoints[0][0].path.endswith("/fs/mine")
    assert result.filesystem is not None  # went through fsspec
    with result.checkpoint.as_directory() as d:
        assert open(os.path.join(d, "w")).read() == "y"
    assert Result.from_path(f"local://{tmp_path}/fs").metrics == {"a": 2}


def test_dataset_shards_are_disjoint_and_equal(shared_cluster, tmp_path):
    def loop():
        ids = [int(x) for b in train.get_dataset_shard("train").iter_batches(batch_size=8)
               for x in b["id"]]
        extra = sum(len(b["id"]) for b in train.get_dataset_shard("val").iter_batches())
        train.report({"ids": ids, "val_rows": extra})

    seen = {}

    class Keep:
        def after_report(self, run_context, metrics, checkpoint):
            seen.setdefault("reports", []).append(metrics[0])

    ds = data.range(41, override_num_blocks=5)
    result = TorchTrainer(  # half a CPU each: the other one runs the datasets' read tasks
        loop, scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets={"train": ds, "val": data.range(10)},
        dataset_config=train.DataConfig(
            datasets_to_split=["train"],
            execution_options={"train": data.ExecutionOptions(preserve_order=True)}),
        run_config=_run(tmp_path, callbacks=[Keep()])).fit()
    assert len(result.metrics["ids"]) == 20 and result.metrics["val_rows"] == 10
    assert seen["reports"][-1] == result.metrics


def test_prepare_data_loader_gives_each_rank_its_part(shared_cluster, tmp_path):
    def loop():
        dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(20)),
                                         batch_size=4, shuffle=True)
        dl = prepare_data_loader(dl)
        dl.sampler.set_epoch(0)
        got = sorted(int(x) for (b,) in dl for x in b)
        t = torch.tensor(got)
        out = [torch.zeros_like(t) for _ in range(2)]
        torch.distributed.all_gather(out, t)
        train.report({"all": sorted(int(x) for o in out for x in o), "mine": len(got)})

    result = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=2),
                          run_config=_run(tmp_path)).fit()
    assert result.metrics == {"all": list(range(20)), "mine": 10}


def _alive(cls: str) -> list:
    from raylite.util.state import list_actors

    return [a for a in list_actors() if a["class_name"] == cls and a["state"] != "DEAD"]


def test_keyboard_interrupt_frees_workers_and_placement_group(shared_cluster, tmp_path):
    import _thread
    import threading

    from raylite.util import placement_group_table

    Signal = raylite.remote(num_cpus=0)(SignalActor)
    gate, started = Signal.remote(), Signal.remote()

    def loop():
        started.send.remote()
        raylite.get(gate.wait.remote())

    def interrupt():
        raylite.get(started.wait.remote())
        _thread.interrupt_main()  # what Jupyter's "interrupt the kernel" does

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=2),
                     run_config=_run(tmp_path)).fit()
    wait_for_condition(lambda: not _alive("TrainWorker"), 10)
    wait_for_condition(lambda: all(p["state"] == "REMOVED"
                                   for p in placement_group_table().values()), 10)
    gate.send.remote()


def test_local_mode_runs_in_the_driver(tmp_path):
    def loop(config):
        assert train.get_context().get_world_size() == 1
        model = prepare_model(torch.nn.Linear(2, 1))  # no process group: not wrapped
        for i in range(config["n"]):
            train.report({"i": i, "pid": os.getpid(), "kind": type(model).__name__},
                         checkpoint=_ckpt(i=i), validate_fn=lambda c, cfg: {"v": 1})
        train.report({"last": True, "n": len(train.get_all_reported_checkpoints())})

    result = TorchTrainer(loop, train_loop_config={"n": 2},
                          scaling_config=ScalingConfig(num_workers=0),
                          run_config=_run(tmp_path)).fit()
    df = result.metrics_dataframe
    assert list(df["pid"].dropna()) == [os.getpid()] * 2 and df["kind"][0] == "Linear"
    assert result.metrics == {"last": True, "n": 2}
    assert [m for _, m in result.best_checkpoints][0]["v"] == 1


def test_scaling_config_validation():
    with pytest.raises(ValueError, match="one per worker"):
        ScalingConfig(num_workers=2, label_selector=[{"a": "b"}])
    with pytest.raises(ValueError):
        ScalingConfig(num_workers=2, label_selector="zone=a")
    sc = ScalingConfig(num_workers=3, label_selector={"zone": "a"})
    assert sc._bundle_label_selector == [{"zone": "a"}] * 3
    with pytest.raises(ValueError):
        CheckpointConfig(num_to_keep=0)
    with pytest.raises(ValueError):
        CheckpointConfig(checkpoint_score_order="up")
