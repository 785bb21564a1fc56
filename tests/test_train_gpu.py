"""Train on a GPU (skipped where torch sees no CUDA device: CI has none; run on the
device machine): use_gpu=True gives each worker its GPU, the nccl backend, a DDP model
on CUDA, CUDA batches from prepare_data_loader and iter_torch_batches, and a checkpoint
of CUDA weights restored on the CPU; and a JaxTrainer worker on its GPU."""

from __future__ import annotations

import os
import tempfile
import time

import pytest

import raylite
from raylite import data, train

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture
def gpu_cluster():
    ctx = raylite.init(num_cpus=2, num_gpus=1)
    try:
        yield ctx
    finally:
        raylite.shutdown()


def test_use_gpu_runs_nccl_ddp_on_cuda(gpu_cluster, tmp_path):
    from raylite.train.torch import TorchTrainer, get_device, prepare_data_loader, prepare_model

    def loop():
        import torch.distributed as dist

        device = get_device()
        model = prepare_model(torch.nn.Linear(16, 1))
        dl = prepare_data_loader(torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.randn(64, 16), torch.randn(64, 1)),
            batch_size=16))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in dl:
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        t = torch.ones(1, device=device)
        dist.all_reduce(t)
        batch = next(iter(train.get_dataset_shard("train").iter_torch_batches(batch_size=8)))
        d = tempfile.mkdtemp()
        torch.save(model.state_dict(), os.path.join(d, "m.pt"))
        train.report({"device": str(device), "backend": dist.get_backend(),
                      "x_device": str(x.device), "sum": t.item(),
                      "batch_device": str(batch["id"].device),
                      "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                      "param_device": str(next(model.parameters()).device)},
                     checkpoint=train.Checkpoint.from_directory(d))

    t0 = time.time()
    result = TorchTrainer(loop, scaling_config=train.ScalingConfig(num_workers=1, use_gpu=True),
                          datasets={"train": data.from_items([{"id": i} for i in range(32)])},
                          run_config=train.RunConfig(name="gpu", storage_path=str(tmp_path))
                          ).fit()
    print(f"fit on one GPU: {time.time() - t0:.2f} s; metrics {result.metrics}")
    m = result.metrics
    assert m["backend"] == "nccl" and m["device"].startswith("cuda")
    assert m["x_device"].startswith("cuda") and m["param_device"].startswith("cuda")
    assert m["batch_device"].startswith("cuda") and m["sum"] == 1.0
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "m.pt"), map_location="cpu", weights_only=True)
    assert state["weight"].shape == (1, 16)


def test_jax_trainer_on_one_gpu(gpu_cluster, tmp_path):
    pytest.importorskip("jax")
    from raylite.train.jax import JaxConfig, JaxTrainer

    def loop():
        import jax
        import jax.numpy as jnp

        x = jnp.ones((256, 256)) @ jnp.ones((256, 256))
        train.report({"platform": jax.devices()[0].platform, "devices": jax.device_count(),
                      "process_count": jax.process_count(), "x": float(x[0, 0])})

    result = JaxTrainer(loop, jax_config=JaxConfig(use_gpu=True),
                        scaling_config=train.ScalingConfig(num_workers=1, use_gpu=True),
                        run_config=train.RunConfig(name="jaxgpu", storage_path=str(tmp_path))
                        ).fit()
    assert result.metrics == {"platform": "gpu", "devices": 1, "process_count": 1,
                              "x": 256.0}
